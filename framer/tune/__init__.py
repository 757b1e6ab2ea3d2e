"""Optuna studies over LightningCLI configs: ``python -m framer.tune --sweep sweeps/<study>.yaml``.

See :mod:`framer.tune.sweep` for the sweep file, :mod:`framer.tune.storage` for storages and
:mod:`framer.tune.objective` for how a trial runs.
"""

from framer.tune.runner import TrialBudget, tune
from framer.tune.sweep import Sweep, SweepError

__all__ = ["Sweep", "SweepError", "TrialBudget", "tune"]
