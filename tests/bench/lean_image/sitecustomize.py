"""Makes this interpreter look like the lent GPU machine's image: torch, Lightning and numpy, nothing more.

Put this directory first on ``PYTHONPATH``. The packages below then look absent, as if never installed:
``importlib.util.find_spec`` returns None, importing them raises ``ModuleNotFoundError`` and
``importlib.metadata`` does not list them. The editable install's import hook is removed too, so ``framer``
comes from ``PYTHONPATH`` (the checkout), as on a machine where nothing was installed.
"""

import re
import sys
from importlib.machinery import PathFinder

BLOCKED = frozenset(
    {"pymatgen", "jarvis", "mlflow", "optuna", "jsonargparse", "matminer", "matbench", "ase", "pytest", "hypothesis"}
    | {"scipy"}  # not on the image either (framer.data's overlap check imports it when called)
)
BLOCKED_DISTRIBUTIONS = BLOCKED | {"jarvis-tools", "mlflow-skinny", "mlflow-tracing", "optuna-integration"}


class ImagePathFinder(PathFinder):
    """The standard path finder, blind to the blocked packages and their distribution metadata."""

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            return None
        return super().find_spec(name, path, target)

    @classmethod
    def find_distributions(cls, *args, **kwargs):
        for distribution in super().find_distributions(*args, **kwargs):
            name = re.sub(r"[-_.]+", "-", (distribution.metadata["Name"] or "")).lower()
            if name not in BLOCKED_DISTRIBUTIONS:
                yield distribution


sys.meta_path[:] = [
    ImagePathFinder if finder is PathFinder else finder
    for finder in sys.meta_path
    if not getattr(finder, "__module__", "").startswith("__editable__")
]
