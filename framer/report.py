"""Collect finished runs into the paper's table: ``python -m framer.report --runs runs/paper --out results``.

Every run made by :mod:`framer.reproduce` holds ``cell.json`` (model, dataset, target, seed) written before
training, and in its ``version_<n>/`` the CLI's ``results.json``/``predictions.csv``/``metrics.csv`` written by
training (layout: :mod:`framer.rundir`). A run counts as finished when its results hold a test MAE. Expected runs
come from ``<runs>/manifest.json``; a run that is expected but not finished is shown as missing, never dropped.

Outputs in ``--out``: ``table.md`` (columns = the paper's 9 targets; per model variant three rows: our MAE mean ± std
over seeds, the paper's value and the difference, rounded to the paper's decimals), ``table.csv`` (the same numbers
unrounded, one row per model), ``runs.csv`` (one row per expected run)
and ``figures/`` (see :mod:`framer.plots`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from framer.errors import UserError, exit_codes
from framer.provenance import git_commit
from framer.rundir import RunDir, RunRoot, find_roots, read_manifest

PAPER_RESULTS = Path(__file__).resolve().parent.parent / "conf" / "paper_results.yaml"
DATASET_SHORT = {"mp": "MP", "jarvis": "JARVIS"}

SMOKE_BANNER = (
    "> **SMOKE RUN: these are not paper numbers.** Every column is a stand-in trained on the embedded synthetic "
    "Ewald dataset with tiny models for 1-2 epochs; it only checks that the pipeline runs end to end. "
    "The paper column and Δ are shown to exercise the layout and mean nothing here."
)


@dataclass(frozen=True)
class Column:
    """One column of the paper's table."""

    dataset: str
    target: str
    label: str
    unit: str

    @property
    def key(self) -> str:
        return f"{self.dataset}/{self.target}"

    @property
    def name(self) -> str:
        """Short title, e.g. ``MP E form``."""
        return f"{DATASET_SHORT.get(self.dataset, self.dataset)} {self.label}"


@dataclass
class PaperTable:
    """``conf/paper_results.yaml``: the paper's columns, rows (our model presets) and values."""

    columns: list[Column]
    models: dict[str, str]  # preset -> row label, in the paper's order
    mae: dict[str, dict[str, float]]  # preset -> column key -> paper MAE
    frames: dict[str, str] = field(default_factory=dict)
    baselines: dict[str, dict[str, float]] = field(default_factory=dict)
    #: row (model or baseline) -> column key -> the number of decimals the paper prints
    decimals: dict[str, dict[str, int]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path = PAPER_RESULTS) -> PaperTable:
        text = Path(path).read_text()
        raw, printed = yaml.safe_load(text), yaml.load(text, Loader=yaml.BaseLoader)  # BaseLoader: values as written
        columns = [Column(c["dataset"], c["target"], c["label"], c["unit"]) for c in raw["columns"]]
        keys = [c.key for c in columns]

        def by_column(values: Sequence[Any], what: str, kind: Callable[[Any], Any] = float) -> dict[str, Any]:
            if len(values) != len(keys):
                raise ValueError(f"{path}: {what} has {len(values)} values for {len(keys)} columns")
            return {k: kind(v) for k, v in zip(keys, values)}

        models = {name: spec["label"] for name, spec in raw["models"].items()}
        mae = {name: by_column(spec["mae"], name) for name, spec in raw["models"].items()}
        baselines = {name: by_column(v, name) for name, v in (raw.get("baselines") or {}).items()}
        rows = {**{n: spec["mae"] for n, spec in printed["models"].items()}, **(printed.get("baselines") or {})}
        decimals = {name: by_column(values, name, lambda v: len(v.partition(".")[2])) for name, values in rows.items()}
        return cls(columns, models, mae, raw.get("frames", {}), baselines, decimals)

    def column(self, key: str) -> Column:
        for c in self.columns:
            if c.key == key:
                return c
        raise KeyError(f"unknown table column {key!r}; known: {[c.key for c in self.columns]}")


@dataclass(frozen=True)
class RunKey:
    """Identifies one run: a table cell (model, column) and a seed."""

    model: str
    column: str  # "<dataset>/<target>" of the paper's table
    seed: int

    @property
    def dirname(self) -> str:
        """Run name and directory below the runs root, e.g. ``mp_e_form__crystalframer__seed0``."""
        return f"{self.column.replace('/', '_')}__{self.model}__seed{self.seed}"


@dataclass
class RunResult:
    """What a run holds (``status`` is finished, missing, failed or incomplete). The table's number is the final
    (SWA) model's test MAE, as in the paper; the best-val checkpoint's is reported beside it."""

    key: RunKey
    run_dir: Path | None  # the run's root <runs>/<key.dirname>
    status: str
    test_mae: float = math.nan
    test_mae_best: float = math.nan
    val_mae: float = math.nan
    epochs: float = math.nan
    n_test: int = 0
    git_sha: str = ""
    splits: str = ""  # short hash of the run's split fingerprints (run.json), to check runs of a column agree
    run: RunDir | None = None  # the finished version directory, whose files the numbers come from


def load_run(key: RunKey, root: Path) -> RunResult:
    """Read one run (its newest finished version) into a :class:`RunResult`."""
    run_root = RunRoot(root)
    run = run_root.latest_finished()
    if run is None:
        status = run_root.status()
        return RunResult(key, root if status != "missing" else None, status)
    results = run.read_results() or {}
    splits = run.read_info().get("splits")  # tagged by a short hash, to check that the runs of a column agree
    return RunResult(
        key,
        root,
        "finished",
        test_mae=run.metric("test/mae", results),
        test_mae_best=run.metric("test_best/mae", results),
        val_mae=run.metric("best_val/mae", results),
        epochs=float(results.get("epochs", math.nan)),
        n_test=results.get("n_test", 0),
        git_sha=str(results.get("git_commit", ""))[:12],
        splits=hashlib.sha256(json.dumps(splits, sort_keys=True).encode()).hexdigest()[:12] if splits else "",
        run=run,
    )


def split_mismatches(results: list[RunResult]) -> dict[str, set[str]]:
    """Columns whose finished runs were trained on different splits (every model and seed must share one)."""
    by_column: dict[str, set[str]] = {}
    for r in results:
        if r.status == "finished" and r.splits:
            by_column.setdefault(r.key.column, set()).add(r.splits)
    return {column: tags for column, tags in by_column.items() if len(tags) > 1}


def collect(runs_dir: str | Path, paper: PaperTable) -> list[RunResult]:
    """One :class:`RunResult` per expected run (missing ones included). Expected are the runs the manifest asks for;
    without a manifest, every (model, column) with the seeds found on disk, plus any other run found."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    found = {}  # every run below runs_dir that has a cell.json
    for root in find_roots(runs_dir):
        cell = root.read_cell()
        found[RunKey(cell["model"], cell["column"], int(cell["seed"]))] = root.path
    manifest = read_manifest(runs_dir)
    if manifest.get("runs"):
        keys = [RunKey(r["model"], r["column"], int(r["seed"])) for r in manifest["runs"]]
    else:
        seeds = sorted({k.seed for k in found}) or [0]
        keys = [RunKey(m, c.key, s) for m in paper.models for c in paper.columns for s in seeds]
        keys += [k for k in found if k not in set(keys)]
    return [load_run(k, found.get(k, runs_dir / k.dirname)) for k in keys]


def fmt(x: float, decimals: int | None = None, sign: bool = False) -> str:
    """``x`` with ``decimals`` decimals (default: three significant digits), fixed notation, "—" for NaN; a leading
    sign with ``sign``."""
    if x is None or not math.isfinite(x):
        return "—"
    if decimals is None:
        decimals = max(0, 2 - math.floor(math.log10(abs(x)))) if x else 0
    return f"{x:{'+' if sign else ''}.{decimals}f}"


def summarize(results: list[RunResult], paper: PaperTable) -> pd.DataFrame:
    """Long table, one row per (model, column): mean, std over seeds, n finished/expected, paper, Δ."""
    rows = []
    models = list(paper.models) + sorted({r.key.model for r in results} - set(paper.models))
    for model in models:
        for col in paper.columns:
            cell = [r for r in results if r.key.model == model and r.key.column == col.key]
            if not cell and model not in paper.models:
                continue
            values = np.array([r.test_mae for r in cell if r.status == "finished"], dtype=float)
            values = values[np.isfinite(values)]
            mean = float(values.mean()) if len(values) else math.nan
            std = float(values.std(ddof=1)) if len(values) > 1 else math.nan
            ref = paper.mae.get(model, {}).get(col.key, math.nan)
            rows.append(
                {
                    "model": model,
                    "label": paper.models.get(model, model),
                    "dataset": col.dataset,
                    "target": col.target,
                    "column": col.key,
                    "unit": col.unit,
                    "mae": mean,
                    "std": std,
                    "n": len(values),
                    "n_expected": len(cell),
                    "paper": ref,
                    "delta": mean - ref,
                    "rel_delta": (mean - ref) / ref if ref else math.nan,
                }
            )
    return pd.DataFrame(rows)


def wide(summary: pd.DataFrame) -> pd.DataFrame:
    """The paper's layout: one row per model, per column ``<col>:mae|std|n|paper|delta``."""
    out = []
    for model, group in summary.groupby("model", sort=False):
        row: dict[str, Any] = {"model": model, "label": group["label"].iloc[0]}
        for _, r in group.iterrows():
            for stat in ("mae", "std", "n", "n_expected", "paper", "delta"):
                row[f"{r['column']}:{stat}"] = r[stat]
        out.append(row)
    return pd.DataFrame(out)


def model_rows(group: pd.DataFrame, paper: PaperTable) -> list[list[str]]:
    """One model's three rows of ``table.md``: our MAE (mean ± std over seeds), the paper's, and Δ = ours − paper,
    each cell rounded to the decimals the paper prints for it; missing runs are spelled out."""
    model, cells = group["model"].iloc[0], {r["column"]: r for _, r in group.iterrows()}
    rows = [[group["label"].iloc[0], "ours"], ["", "paper"], ["", "Δ"]]
    for col in paper.columns:
        r = cells.get(col.key)
        if r is None:
            for row in rows:
                row.append("—")
            continue
        places = paper.decimals.get(model, {}).get(col.key)
        ours = fmt(r["mae"], places) if r["n"] else f"**missing** (0/{r['n_expected']})"
        if r["n"] > 1:
            ours += " ± " + fmt(r["std"], places)
        if 0 < r["n"] < r["n_expected"]:
            ours += f" ({r['n']}/{r['n_expected']} seeds)"
        for row, text in zip(rows, (ours, fmt(r["paper"], places), fmt(r["delta"], places, sign=True))):
            row.append(text)
    return rows


def header(col: Column) -> str:
    return f"{col.name} ({col.unit})"


def render_markdown(
    summary: pd.DataFrame, results: list[RunResult], paper: PaperTable, smoke: bool, title: str, stand_ins: dict
) -> str:
    """``table.md``: banner, the paper-layout table, status counts, the paper's other methods."""
    lines = [f"# {title}", ""]
    if smoke:
        lines += [SMOKE_BANNER, ""]
    finished = sum(r.status == "finished" for r in results)
    lines += [
        f"Runs finished: {finished}/{len(results)}. Per model: our test MAE, mean ± std over seeds (SWA model when "
        "the run reports one); the paper's value; Δ = ours − paper; rounded to the decimals the paper prints. "
        "Missing runs are marked **missing**.",
        "",
    ]
    headers = ["Model", "MAE"] + [header(c) for c in paper.columns]
    body = [row for _, group in summary.groupby("model", sort=False) for row in model_rows(group, paper)]
    lines += [markdown_table(headers, body), ""]
    if stand_ins:
        lines += ["Stand-ins used for each column in this smoke run:", ""]
        lines += [f"- {header(paper.column(k))}: {v}" for k, v in stand_ins.items()]
        lines.append("")
    mismatched = split_mismatches(results)
    if mismatched:
        lines += ["**Split mismatch**: the runs of these columns were not all trained on the same split "
                  "(see the `splits` column of runs.csv):", ""]  # fmt: skip
        lines += [f"- {header(paper.column(c))}: {len(tags)} different splits" for c, tags in mismatched.items()]
        lines.append("")
    bad = [r for r in results if r.status != "finished"]
    if bad:
        lines += [f"Not finished ({len(bad)}):", ""]
        lines += [f"- {r.key.model} / {r.key.column} / seed {r.key.seed}: {r.status}" for r in bad[:50]]
        if len(bad) > 50:
            lines.append(f"- … and {len(bad) - 50} more (see runs.csv)")
        lines.append("")
    if paper.baselines:
        lines += ["Other methods in the paper's table (not re-run here):", ""]
        rows = [
            [name] + [fmt(v.get(c.key, math.nan), paper.decimals[name].get(c.key)) for c in paper.columns]
            for name, v in paper.baselines.items()
        ]
        lines += [markdown_table(["Method"] + [header(c) for c in paper.columns], rows), ""]
    return "\n".join(lines)


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    """A GitHub-flavoured markdown table (pandas + tabulate; pipes in cells escaped, numbers printed as given)."""

    def escape(cells: list[str]) -> list[str]:
        return [str(c).replace("|", "\\|") for c in cells]

    return pd.DataFrame(map(escape, rows), columns=escape(headers)).to_markdown(index=False, disable_numparse=True)


def runs_frame(results: list[RunResult], paper: PaperTable) -> pd.DataFrame:
    """``runs.csv``: one row per expected run with its status and numbers."""
    units = {c.key: c.unit for c in paper.columns}
    numbers = ("test_mae", "test_mae_best", "val_mae", "epochs", "n_test", "git_sha", "splits")
    rows = [
        {
            "model": r.key.model,
            "dataset": r.key.column.split("/")[0],
            "target": r.key.column.split("/")[-1],
            "units": units.get(r.key.column, ""),
            "seed": r.key.seed,
            "status": r.status,
            **{name: getattr(r, name) for name in numbers},
            "run_dir": str(r.run_dir) if r.run_dir else "",
        }
        for r in results
    ]
    return pd.DataFrame(rows)


def write_report(
    runs_dir: str | Path, out_dir: str | Path, paper_path: str | Path = PAPER_RESULTS, figures: bool = True
) -> dict[str, Path]:
    """Write table.md, table.csv, runs.csv and figures/ for the runs below ``runs_dir``; return the paths."""
    runs_dir, out_dir = Path(runs_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paper = PaperTable.load(paper_path)
    manifest = read_manifest(runs_dir)
    results = collect(runs_dir, paper)
    smoke = bool(manifest.get("smoke")) or any(
        RunRoot(r.run_dir).read_cell().get("smoke", False) for r in results if r.run_dir is not None
    )
    summary = summarize(results, paper)
    title = manifest.get("title") or ("Smoke reproduction (not paper numbers)" if smoke else "Reproduction of Table 1")
    paths = {"md": out_dir / "table.md", "csv": out_dir / "table.csv", "runs": out_dir / "runs.csv"}
    md = render_markdown(summary, results, paper, smoke, title, manifest.get("stand_ins", {}))
    git = git_commit(short=True)
    commit = f"{git['commit']}{' with uncommitted changes' if git['dirty'] else ''}" if git else "unknown"
    paths["md"].write_text(md + f"\nGenerated from `{runs_dir}` at git {commit}.\n")
    table = wide(summary)
    table.insert(0, "smoke", smoke)
    table.to_csv(paths["csv"], index=False)
    runs_frame(results, paper).to_csv(paths["runs"], index=False)
    if figures:
        from framer import plots

        paths.update(plots.report_figures(results, summary, paper, out_dir / "figures"))
    return paths


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m framer.report", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", required=True, help="directory of run dirs (made by framer.reproduce)")
    parser.add_argument("--out", required=True, help="output directory for table.md, table.csv, figures/")
    parser.add_argument("--paper", default=str(PAPER_RESULTS), help="paper results YAML")
    parser.add_argument("--no-figures", action="store_true", help="skip the figures")
    args = parser.parse_args(argv)
    with exit_codes("framer", user_errors=(ValueError, yaml.YAMLError)):
        if not Path(args.runs).is_dir():
            raise UserError(f"runs directory {args.runs} not found")
        paths = write_report(args.runs, args.out, args.paper, figures=not args.no_figures)
    print(f"wrote {paths['md']} and {paths['csv']}")


if __name__ == "__main__":
    main()
