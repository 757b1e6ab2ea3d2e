"""Figures drawn from the CSVs runs leave behind (matplotlib Agg, PNG); runs are read through :mod:`framer.rundir`.

Per run: parity plot, error histogram, learning curves (``run_figures``; ``figures_of_run`` also logs them to the
run's MLflow run). Per report: grids of the same over the table's columns for each model and a frame-type comparison
chart (``report_figures``).

    python -m framer.plots run <run_dir> [--out DIR]
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator, NullFormatter

from framer.rundir import RunDir, resolve

log = logging.getLogger(__name__)
DPI = 120


def read_predictions(path: str | Path) -> pd.DataFrame:
    """``predictions.csv`` (columns ``id, target, prediction``) as a frame."""
    df = pd.read_csv(path)
    missing = {"target", "prediction"} - set(df.columns)
    if missing:
        raise ValueError(f"{path}: no {sorted(missing)} column (expected id, target, prediction)")
    return df


def read_curves(path: str | Path) -> pd.DataFrame:
    """Lightning ``metrics.csv`` reduced to one row per epoch (last logged value of each metric)."""
    df = pd.read_csv(path)
    if "epoch" not in df.columns:
        raise ValueError(f"{path}: no 'epoch' column")
    df = df.dropna(subset=["epoch"])
    metrics = [c for c in df.columns if c not in ("epoch", "step")]
    return df.groupby("epoch")[metrics].last().dropna(axis=1, how="all")


def _parity_ax(ax: Any, df: pd.DataFrame, title: str, unit: str = "") -> None:
    y, p = df["target"].to_numpy(float), df["prediction"].to_numpy(float)
    ok = np.isfinite(y) & np.isfinite(p)
    y, p = y[ok], p[ok]
    if len(y) == 0:
        ax.text(0.5, 0.5, "no predictions", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(title, fontsize=9)
        return
    lo, hi = float(min(y.min(), p.min())), float(max(y.max(), p.max()))
    pad = 0.05 * (hi - lo or 1.0)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="0.5", lw=1, ls="--", zorder=1)
    ax.scatter(y, p, s=14, alpha=0.7, lw=0, zorder=2)
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_aspect("equal", adjustable="box")
    mae = float(np.abs(p - y).mean())
    ax.text(0.04, 0.96, f"MAE {mae:.4g}\nn = {len(y)}", transform=ax.transAxes, va="top", fontsize=8)
    suffix = f" ({unit})" if unit else ""
    ax.set_xlabel("target" + suffix, fontsize=8)
    ax.set_ylabel("prediction" + suffix, fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=7)


def _hist_ax(ax: Any, df: pd.DataFrame, title: str, unit: str = "") -> None:
    err = (df["prediction"] - df["target"]).to_numpy(float)
    err = err[np.isfinite(err)]
    if len(err) == 0:
        ax.text(0.5, 0.5, "no predictions", ha="center", va="center", transform=ax.transAxes)
    else:
        ax.hist(err, bins=min(50, max(5, len(err) // 4)), color="C1", alpha=0.8)
        ax.axvline(0, color="0.3", lw=1)
        ax.text(0.04, 0.96, f"MAE {np.abs(err).mean():.4g}", transform=ax.transAxes, va="top", fontsize=8)
    ax.set_xlabel("prediction − target" + (f" ({unit})" if unit else ""), fontsize=8)
    ax.set_ylabel("count", fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=7)


def _curves_ax(ax: Any, curves: pd.DataFrame, title: str) -> None:
    shown = [c for c in curves.columns if c.startswith(("train/loss", "val/mae", "val/loss", "train/mae"))]
    for name in shown or list(curves.columns)[:4]:
        series = curves[name].dropna()
        if len(series):
            ax.plot(series.index, series.to_numpy(float), marker="o", ms=3, label=name)
    values = curves[shown].to_numpy(float) if shown else np.array([])
    values = values[np.isfinite(values)]
    if values.size and values.min() > 0 and values.max() / values.min() > 20:  # log only when it spans decades
        ax.set_yscale("log")
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))
    ax.set_xlabel("epoch", fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=7)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)


def save_figure(fig: Any, path: Path, tight: bool = True) -> Path:
    """Save ``fig`` as a PNG (creating its directory) and close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if tight:
        fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _figure(draw: Callable[..., None], size: tuple[float, float], out: Path, *args: Any) -> Path:
    """One panel drawn by ``draw(ax, *args)``, saved to ``out``."""
    fig, ax = plt.subplots(figsize=size)
    draw(ax, *args)
    return save_figure(fig, out)


def run_figures(run: RunDir, out_dir: str | Path | None = None, title: str = "") -> dict[str, Path]:
    """Parity plot, error histogram and learning curves of one run (whichever inputs exist) into ``out_dir``
    (default: the run's ``figures/``)."""
    out = Path(out_dir) if out_dir else run.figures
    title = title or run.name
    paths: dict[str, Path] = {}
    if run.predictions().is_file():
        preds = read_predictions(run.predictions())
        paths["parity"] = _figure(_parity_ax, (4.2, 4.2), out / "parity.png", preds, f"{title}: test parity")
        paths["errors"] = _figure(_hist_ax, (4.8, 3.4), out / "errors.png", preds, f"{title}: test errors")
    if run.curves.is_file():
        try:
            curves, name = read_curves(run.curves), f"{title}: learning curves"
            paths["curves"] = _figure(_curves_ax, (5.2, 3.6), out / "learning_curves.png", curves, name)
        except (ValueError, KeyError, pd.errors.EmptyDataError) as err:
            log.warning("no learning curves for %s: %s", run.path, err)
    return paths


def figures_of_run(run: RunDir, title: str = "") -> dict[str, Path]:
    """:func:`run_figures` into the run's ``figures/``, logged to the run's MLflow run when it has one. Figures never
    fail a run: a drawing error is a warning and no figure."""
    try:
        paths = run_figures(run, title=title)
    except Exception as err:
        log.warning("no figures for %s: %s", run.path, err)
        return {}
    info = run.read_info()
    if paths and info.get("mlflow_run_id") and info.get("mlflow_tracking_uri"):
        from framer.tracking import log_files

        log_files(info["mlflow_tracking_uri"], info["mlflow_run_id"], paths.values(), subdir="figures")
    return paths


def _grid(n: int, size: float = 3.0) -> tuple[Any, np.ndarray]:
    ncols = min(n, 5)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows + 0.5), squeeze=False)
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.08, top=0.9, wspace=0.35, hspace=0.45)
    for ax in axes.flat:
        ax.yaxis.set_major_locator(MaxNLocator(4))
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, axes.flat


def report_figures(results: Sequence[Any], summary: pd.DataFrame, paper: Any, out_dir: str | Path) -> dict[str, Path]:
    """Per model: parity, error and learning-curve grids over the 9 columns (all seeds pooled; curves of the first
    seed); plus ``frames.png`` comparing frame types against Crystalformer. ``results`` and ``paper`` are
    :mod:`framer.report`'s ``RunResult`` list and ``PaperTable``."""
    out = Path(out_dir)
    paths: dict[str, Path] = {}
    for model in dict.fromkeys(r.key.model for r in results):
        done = [r for r in results if r.key.model == model and r.status == "finished" and r.run is not None]
        if not done:
            continue
        label = paper.models.get(model, model)
        figs = {kind: _grid(len(paper.columns)) for kind in ("parity", "errors", "curves")}
        for i, col in enumerate(paper.columns):
            runs = sorted((r for r in done if r.key.column == col.key), key=lambda r: r.key.seed)
            frames = [read_predictions(p) for r in runs if (p := r.run.predictions()).is_file()]
            preds = pd.concat(frames) if frames else pd.DataFrame({"target": [], "prediction": []})
            _parity_ax(figs["parity"][1][i], preds, col.name, col.unit)
            _hist_ax(figs["errors"][1][i], preds, col.name, col.unit)
            curves = runs[0].run.curves if runs else None
            if curves is not None and curves.is_file():
                try:
                    _curves_ax(figs["curves"][1][i], read_curves(curves), col.name)
                except (ValueError, KeyError, pd.errors.EmptyDataError):
                    figs["curves"][1][i].set_title(f"{col.name}: no curves", fontsize=9)
            else:
                figs["curves"][1][i].set_title(f"{col.name}: missing", fontsize=9)
        for kind, (fig, _) in figs.items():
            fig.suptitle(f"{label}: {kind}", fontsize=11)
            paths[f"{kind}_{model}"] = save_figure(fig, out / f"{kind}_{model}.png", tight=False)
    if not summary.empty:
        paths["frames"] = frame_comparison(summary, paper, out / "frames.png")
    return paths


def frame_comparison(summary: pd.DataFrame, paper: Any, out: str | Path, baseline: str = "crystalformer") -> Path:
    """Grouped bars: each model's MAE relative to Crystalformer per column (ours filled, paper as markers)."""
    models = [m for m in paper.models if m in set(summary["model"])]
    cols = paper.columns
    fig, ax = plt.subplots(figsize=(max(9.0, 1.25 * len(cols)), 5.6))
    width = 0.8 / max(len(models), 1)
    x = np.arange(len(cols))
    for j, model in enumerate(models):
        ours, ref = [], []
        for col in cols:
            row = summary[(summary["model"] == model) & (summary["column"] == col.key)]
            base = summary[(summary["model"] == baseline) & (summary["column"] == col.key)]
            ours.append(float(row["mae"].iloc[0] / base["mae"].iloc[0]) if len(row) and len(base) else math.nan)
            p, pb = paper.mae.get(model, {}).get(col.key), paper.mae.get(baseline, {}).get(col.key)
            ref.append(p / pb if p and pb else math.nan)
        pos = x - 0.4 + width * (j + 0.5)
        frame = paper.frames.get(model, "")
        label = f"{paper.models.get(model, model)}" + (f" [{frame}]" if frame and frame not in model else "")
        ax.bar(pos, np.nan_to_num(ours, nan=0.0), width, label=label, color=f"C{j}", alpha=0.85)
        ax.scatter(pos, ref, marker="_", s=120, color="k", lw=1.5, zorder=3)
    ax.axhline(1.0, color="0.4", lw=1, ls="--")
    ax.set_xticks(x)
    ax.set_xticklabels([f"{c.dataset.upper()}\n{c.label.replace(' (', chr(10) + '(')}" for c in cols], fontsize=8)
    ax.set_ylabel(f"test MAE / {paper.models.get(baseline, baseline)} MAE")
    ax.set_title("Frame types: ours (bars) vs paper (black ticks); lower is better", fontsize=10)
    ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False)
    return save_figure(fig, Path(out))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m framer.plots", description="Draw framer's figures.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="parity, error histogram and learning curves of one run dir")
    run.add_argument("run_dir")
    run.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    run = resolve(args.run_dir)
    if run is None:
        parser.error(f"{args.run_dir} is not a run directory")
    paths = run_figures(run, args.out)
    for p in paths.values():
        print(p)


if __name__ == "__main__":
    main()
