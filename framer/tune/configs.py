"""Moved to :mod:`framer.launch`; these names stay while :mod:`framer.tune.sweep` and :mod:`framer.tune.runner`
import them from here (issue 16 step 12 deletes this module)."""

from framer.launch import config_path as resolve_path
from framer.launch import resolved_config

__all__ = ["resolve_path", "resolved_config"]
