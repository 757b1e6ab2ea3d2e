"""Synthetic run directories shaped like the CLI's output, for report and plot tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from framer.report import PaperTable, RunKey
from framer.rundir import CELL, MANIFEST, RESULTS


def make_run(
    root: Path, key: RunKey, mae: float, n: int = 12, epochs: int = 3, finished: bool = True, results: str = RESULTS
) -> Path:
    """One run as framer.reproduce leaves it: ``<key>/cell.json`` and ``<key>/version_0/`` with metrics.csv and (when
    finished) ``results`` (``results.json``, or ``metrics.json`` as runs made before the rename) + predictions.csv.
    Returns the version directory."""
    (root / key.dirname).mkdir(parents=True, exist_ok=True)
    (root / key.dirname / CELL).write_text(json.dumps({"model": key.model, "column": key.column, "seed": key.seed}))
    run = root / key.dirname / "version_0"
    run.mkdir(exist_ok=True)
    rng = np.random.default_rng(key.seed)
    lines = ["epoch,step,train/loss,val/mae"]
    for e in range(epochs):
        lines.append(f"{e},{e * 4 + 3},{1.0 / (e + 1)},")
        lines.append(f"{e},{e * 4 + 3},,{0.5 / (e + 1)}")
    (run / "metrics.csv").write_text("\n".join(lines) + "\n")
    if finished:
        y = rng.normal(size=n)
        sign = np.where(np.arange(n) % 2 == 0, 1.0, -1.0)
        rows = ["id,target,prediction"] + [f"x{i},{y[i]},{y[i] + sign[i] * mae}" for i in range(n)]
        (run / "predictions.csv").write_text("\n".join(rows) + "\n")
        metrics = {
            "metrics": {"test/mae": mae, "test_best/mae": mae * 1.1, "best_val/mae": mae * 0.9},
            "epochs": epochs,
            "n_test": n,
            "git_commit": "0123456789abcdef",
        }
        (run / results).write_text(json.dumps(metrics))
    return run


def make_runs(
    root: Path, paper: PaperTable, seeds=(0, 1), skip: set[RunKey] = frozenset(), smoke=False, models=None
) -> list:
    """A manifest for every (model, column, seed) and finished runs for all but ``skip``."""
    keys = [RunKey(m, c.key, s) for m in models or paper.models for c in paper.columns for s in seeds]
    root.mkdir(parents=True, exist_ok=True)
    manifest = {"smoke": smoke, "runs": [{"model": k.model, "column": k.column, "seed": k.seed} for k in keys]}
    (root / MANIFEST).write_text(json.dumps(manifest))
    for i, k in enumerate(keys):
        if k not in skip:
            make_run(root, k, mae=0.01 * (1 + i % 7) + 0.001 * k.seed)
    return keys
