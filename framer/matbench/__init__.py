"""Matbench v0.1 structure-regression tasks: a fold DataModule, matbench-API recording and a per-fold runner.

    python -m framer.matbench --task matbench_log_kvrh [--folds 0 1 2 3 4] [--config ...]

Data files are never downloaded: place matminer's ``<task>.json.gz`` in ``$MATMINER_DATA``.
"""

from framer.matbench.datamodule import MatbenchDataModule

__all__ = ["MatbenchDataModule"]
