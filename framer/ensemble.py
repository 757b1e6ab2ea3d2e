"""Each cell of a reproduction as an ensemble of its seeds: exported, and measured on the cell's test split.

    python -m framer.ensemble --runs runs/smoke --out results/smoke     (the last step of make reproduce-table)

For every (model, column) cell with at least two finished seeds, ``<runs>/ensembles/<column>__<model>/`` becomes an
ensemble folder of the seeds' final weights (:mod:`framer.export`; ``framer.load`` reads it). On the cell's test
split, from the members' test predictions (each run's ``predictions.csv``, which the exported weights reproduce):
the ensemble's MAE (members' mean) next to the single models' MAEs, and Spearman's rank correlation of the
ensemble's spread (standard deviation over members) with its absolute error. Writes ``<out>/ensembles.md``,
``<out>/ensembles.csv`` and ``<out>/figures/calibration.png`` (mean |error| per bin of predicted std, per model).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from framer.errors import exit_codes
from framer.export import export
from framer.io import atomic_write_text, write_csv_rows
from framer.plots import read_predictions, save_figure
from framer.provenance import git_commit
from framer.rundir import RunDir, find_roots

ENSEMBLES = "ensembles"  # below the runs directory


@dataclass
class CellEnsemble:
    """One cell's members on its test split: targets, members' predictions (members x crystals), and the folder
    the ensemble is exported to."""

    model: str
    column: str
    seeds: list[int]
    targets: np.ndarray
    predictions: np.ndarray
    folder: Path

    @property
    def errors(self) -> np.ndarray:
        return np.abs(self.predictions.mean(0) - self.targets)

    @property
    def std(self) -> np.ndarray:
        return self.predictions.std(0)


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation; NaN for fewer than three points or a constant input."""
    from scipy.stats import spearmanr

    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    return float(spearmanr(x, y).statistic)


def collect_cells(runs_dir: str | Path) -> tuple[list[CellEnsemble], list[str]]:
    """The cells with at least two finished seeds whose test predictions cover the same crystals, and notes on
    the cells left out."""
    members: dict[tuple[str, str], dict[int, RunDir]] = {}
    for root in find_roots(runs_dir):
        cell, run = root.read_cell(), root.latest_finished()
        if run is not None and run.predictions().is_file():
            members.setdefault((cell["model"], cell["column"]), {})[int(cell["seed"])] = run
    cells, notes = [], []
    for (model, column), runs in sorted(members.items()):
        if len(runs) < 2:
            notes.append(f"{column} {model}: {len(runs)} finished seed(s), no ensemble")
            continue
        seeds = sorted(runs)
        tables = [read_predictions(runs[s].predictions()).set_index("id").sort_index() for s in seeds]
        if any(not t.index.equals(tables[0].index) for t in tables):
            notes.append(f"{column} {model}: the seeds were tested on different crystals, no ensemble")
            continue
        predictions = np.stack([t["prediction"].to_numpy(float) for t in tables])
        folder = Path(runs_dir) / ENSEMBLES / f"{column.replace('/', '_')}__{model}"
        cell = CellEnsemble(model, column, seeds, tables[0]["target"].to_numpy(float), predictions, folder)
        export([runs[s].path for s in seeds], cell.folder, force=True)
        cells.append(cell)
    return cells, notes


def pooled(cells: Sequence[CellEnsemble]) -> tuple[np.ndarray, np.ndarray]:
    """(std, |error|) of every test crystal of ``cells``."""
    return np.concatenate([c.std for c in cells]), np.concatenate([c.errors for c in cells])


def calibration_figure(cells: Sequence[CellEnsemble], path: Path, bins: int = 5) -> Path:
    """Mean |error| against mean predicted std in quantile bins of the std, one line per model."""
    import matplotlib.pyplot as plt  # with the Agg backend framer.plots chose

    fig, ax = plt.subplots(figsize=(5, 4))
    top = 0.0
    for model in sorted({c.model for c in cells}):
        std, err = pooled([c for c in cells if c.model == model])
        order = np.argsort(std, kind="stable")
        groups = [g for g in np.array_split(order, min(bins, len(order))) if len(g)]
        x, y = [std[g].mean() for g in groups], [err[g].mean() for g in groups]
        ax.plot(x, y, "o-", label=model)
        top = max(top, *x)
    ax.plot([0, top], [0, top * math.sqrt(2 / math.pi)], "k--", label="Gaussian errors: E|e| = 0.80 σ")
    ax.set_xlabel("predicted std (spread over members)")
    ax.set_ylabel("mean |error| of the ensemble")
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def write_summary(cells: Sequence[CellEnsemble], notes: Sequence[str], runs_dir: Path, out: Path) -> Path:
    """``ensembles.csv``, ``ensembles.md`` and the calibration figure in ``out``."""
    rows = []
    for c in cells:
        single, rho = np.abs(c.predictions - c.targets).mean(1), spearman(c.std, c.errors)  # each member's MAE
        rows.append([c.column, c.model, len(c.seeds), len(c.targets), float(single.mean()), float(single.min()),
                     float(single.max()), float(c.errors.mean()), rho, str(c.folder)])  # fmt: skip
    header = ["column", "model", "members", "n_test", "single_mae_mean", "single_mae_min", "single_mae_max",
              "ensemble_mae", "spearman_std_abs_error", "folder"]  # fmt: skip
    write_csv_rows(out / "ensembles.csv", header, rows)
    lines = [
        f"# Ensembles of {runs_dir}",
        "",
        f"Each cell's seeds as one ensemble (mean over members), on the cell's test split, from the members' test "
        f"predictions. Spearman ρ: rank correlation of the ensemble's spread (std over members) with its absolute "
        f"error (NaN below 3 test crystals). Commit {git_commit(short=True).get('commit', 'unknown')}.",
        "",
    ]
    lines += md_table(
        ["column", "model", "members", "test crystals", "single-model MAE (mean, min–max)", "ensemble MAE", "ρ"],
        [[*r[:4], f"{r[4]:.4g} ({r[5]:.4g}–{r[6]:.4g})", f"{r[7]:.4g}", f"{r[8]:.2f}"] for r in rows],
    )
    lines += ["", "Pooled over each model's cells (every test crystal of its columns):", ""]
    summary = []
    for model in sorted({c.model for c in cells}):
        mine = [c for c in cells if c.model == model]
        std, err = pooled(mine)
        single = np.concatenate([np.abs(c.predictions - c.targets).ravel() for c in mine]).mean()
        summary.append([model, len(err), f"{single:.4g}", f"{err.mean():.4g}", f"{spearman(std, err):.2f}"])
    lines += md_table(["model", "test crystals", "single-model MAE", "ensemble MAE", "ρ"], summary)
    if cells:
        calibration_figure(cells, out / "figures" / "calibration.png")
        lines += ["", "![calibration](figures/calibration.png)"]
    lines += ["", *[f"- {note}" for note in notes]]
    return atomic_write_text(out / "ensembles.md", "\n".join(lines).rstrip() + "\n")


def md_table(header: Sequence[str], rows: Sequence[Sequence]) -> list[str]:
    return [f"| {' | '.join(header)} |", f"|{'---|' * len(header)}", *(f"| {' | '.join(map(str, r))} |" for r in rows)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m framer.ensemble", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", required=True, help="runs directory of framer.reproduce")
    parser.add_argument("--out", required=True, help="results directory (ensembles.md, ensembles.csv, figures/)")
    args = parser.parse_args(argv)
    with exit_codes("framer", user_errors=(OSError,)):
        cells, notes = collect_cells(args.runs)
        path = write_summary(cells, notes, Path(args.runs), Path(args.out))
    print(f"framer.ensemble: {len(cells)} ensembles in {Path(args.runs) / ENSEMBLES}; summary {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
