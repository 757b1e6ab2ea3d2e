"""Run every (dataset, target, model, seed) cell of the paper's table from a manifest, resumably.

    python -m framer.reproduce [--smoke] [--manifest conf/reproduce/paper.yaml] [--seeds ...] [--shard i/n]
    python -m framer.report --runs runs/paper --out results
    python -m framer.ensemble --runs runs/paper --out results     # each cell's seeds as one exported ensemble

Each run is ``python -m framer.cli fit --config <configs with {dataset}, {target}, {model} filled in> <overrides>``
with its run directory at ``<runs_dir>/<dataset>_<target>__<model>__seed<k>/`` (``cell.json`` there, the CLI's
``version_<n>/`` below it; see :mod:`framer.rundir`). A run whose results hold a test MAE is skipped; an interrupted
run is resumed with ``--ckpt_path last`` when it left a ``last.ckpt``; a failed run leaves ``FAILED`` (the message)
and the others go on. A run stopped by SIGTERM (pre-emption) stops the whole command with exit code 143; run it
again to resume. ``<runs_dir>/manifest.json`` lists every expected run, so the report shows missing ones.

Manifest keys (``conf/reproduce/*.yaml``): ``title``, ``smoke``, ``runs_dir``, ``seeds``, ``configs``, ``overrides``
(every run; string values may use ``{dataset} {target} {model} {seed} {column_index}`` and are then read as YAML),
``models`` and ``columns`` (default: every row and column of ``conf/paper_results.yaml``), ``launcher``
(``subprocess``: one process per run, required for DDP; ``inprocess``: faster for many tiny runs), ``quiet``
(progress bars off) and ``stand_ins`` (smoke: what each column really trains on).
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from framer import launch, rundir
from framer.errors import UserError, exit_codes
from framer.launch import EXIT_SIGTERM, Outcome, RunSpec, config_path
from framer.provenance import git_commit
from framer.report import PAPER_RESULTS, PaperTable, RunKey
from framer.rundir import RunRoot

MANIFESTS = {name: launch.REPO / "conf" / "reproduce" / f"{name}.yaml" for name in ("paper", "smoke")}
LAUNCHERS = ("subprocess", "inprocess")


class ManifestError(UserError, ValueError):
    """A manifest that cannot be run (unknown keys, columns or launcher)."""


@dataclass
class Manifest:
    """A parsed ``conf/reproduce/*.yaml``."""

    title: str
    runs_dir: Path
    seeds: list[int]
    configs: list[str]
    overrides: dict[str, Any] = field(default_factory=dict)
    models: list[str] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)
    launcher: str = "subprocess"
    quiet: bool = True
    smoke: bool = False
    stand_ins: dict[str, str] = field(default_factory=dict)
    experiment_name: str = "reproduce"

    @classmethod
    def load(cls, path: str | Path, paper: PaperTable) -> Manifest:
        raw = yaml.safe_load(Path(path).read_text()) or {}
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ManifestError(f"{path}: unknown keys {unknown}; allowed: {sorted(known)}")
        if not raw.get("configs"):
            raise ManifestError(f"{path}: 'configs' must list at least one config file")
        manifest = cls(
            title=str(raw.get("title", Path(path).stem)),
            runs_dir=Path(raw.get("runs_dir", f"runs/{Path(path).stem}")),
            seeds=[int(s) for s in raw.get("seeds", [123])],
            configs=[str(c) for c in raw["configs"]],
            overrides=dict(raw.get("overrides") or {}),
            models=list(raw.get("models") or paper.models),
            columns=list(raw.get("columns") or [c.key for c in paper.columns]),
            launcher=str(raw.get("launcher", "subprocess")),
            quiet=bool(raw.get("quiet", True)),
            smoke=bool(raw.get("smoke", False)),
            stand_ins=dict(raw.get("stand_ins") or {}),
            experiment_name=str(raw.get("experiment_name", f"reproduce-{Path(path).stem}")),
        )
        if manifest.launcher not in LAUNCHERS:
            raise ManifestError(f"{path}: launcher must be one of {LAUNCHERS}")
        bad = [c for c in manifest.columns if c not in {col.key for col in paper.columns}]
        if bad:
            raise ManifestError(f"{path}: unknown columns {bad}")
        return manifest


@dataclass
class Run:
    """One run: its key, directory and the CLI run that makes it."""

    key: RunKey
    root: RunRoot
    spec: RunSpec


def fill(template: Any, context: Mapping[str, Any]) -> Any:
    """Substitute ``{name}`` in strings (a string that was only placeholders is re-read as YAML: "3" -> 3)."""
    if isinstance(template, str) and "{" in template:
        text = template.format(**context)
        return yaml.safe_load(text) if text.strip() else text
    if isinstance(template, dict):
        return {k: fill(v, context) for k, v in template.items()}
    if isinstance(template, list):
        return [fill(v, context) for v in template]
    return template


def plan(manifest: Manifest, paper: PaperTable) -> list[Run]:
    """The runs of a manifest with their configs and overrides resolved."""
    index = {c.key: i for i, c in enumerate(paper.columns)}
    runs = []
    # seed-major: all cells of seed 0 first, so partial results cover the table early
    for key in [RunKey(m, c, s) for s in manifest.seeds for m in manifest.models for c in manifest.columns]:
        if key.column not in index:
            raise ManifestError(f"unknown column {key.column!r}; known: {list(index)}")
        col = paper.column(key.column)
        context = dict(
            dataset=col.dataset, target=col.target, model=key.model, seed=key.seed, column_index=index[key.column]
        )
        configs = [config_path(str(fill(c, context))) for c in manifest.configs]
        missing = [c for c in configs if not Path(c).is_file()]
        if missing:
            raise ManifestError(f"{key.model} / {key.column}: config {missing[0]} not found")
        overrides = {
            **{k: fill(v, context) for k, v in manifest.overrides.items()},
            "seed_everything": key.seed,
            "tracking.save_dir": str(manifest.runs_dir),
            "tracking.run_name": key.dirname,
            "tracking.experiment_name": manifest.experiment_name,
            "tracking.tags": {"model": key.model, "column": key.column, "seed": str(key.seed)},
        }
        spec = RunSpec(configs, overrides, quiet=manifest.quiet)
        runs.append(Run(key, RunRoot(manifest.runs_dir / key.dirname), spec))
    return runs


def write_manifest(manifest: Manifest, runs: Sequence[Run]) -> Path:
    """``<runs_dir>/manifest.json``: every expected run (the report's list of what should exist)."""
    data = {
        "title": manifest.title,
        "smoke": manifest.smoke,
        "stand_ins": manifest.stand_ins,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git": git_commit(short=True).get("commit", ""),
        "runs": [{"model": r.key.model, "column": r.key.column, "seed": r.key.seed} for r in runs],
    }
    return rundir.write_manifest(manifest.runs_dir, data)


def execute(
    runs: Sequence[Run],
    launcher: str,
    shard: tuple[int, int] = (0, 1),
    max_runs: int | None = None,
    runner: Callable[..., Outcome] = launch.run,  # launch.run's signature: (spec, mode, log) -> Outcome
) -> dict[str, int]:
    """Run what is not finished yet (this shard's share) with ``runner``; returns counts of
    finished/skipped/failed/resumed/interrupted runs. A run stopped by SIGTERM stops the loop."""
    counts = {"finished": 0, "skipped": 0, "failed": 0, "resumed": 0, "interrupted": 0}
    todo = [r for i, r in enumerate(runs) if i % shard[1] == shard[0]]
    started = 0
    for n, run in enumerate(todo, 1):
        if run.root.finished:
            counts["skipped"] += 1
            continue
        if max_runs is not None and started >= max_runs:
            break
        started += 1
        run.root.clear_failed()
        run.root.write_cell({"model": run.key.model, "column": run.key.column, "seed": run.key.seed})
        resume = run.root.last_checkpoint() is not None
        counts["resumed"] += resume
        t0 = time.time()
        what = "resuming" if resume else "running"
        print(f"framer.reproduce: [{n}/{len(todo)}] {what} {run.key.dirname}", flush=True)
        outcome = runner(replace(run.spec, resume=resume), launcher, log=run.root.launch_log)
        if outcome.interrupted:
            counts["interrupted"] += 1
            print(f"framer.reproduce: {run.key.dirname} stopped by SIGTERM; run again to resume", file=sys.stderr)
            break
        finished = run.root.latest_finished()
        if outcome.ok and finished is not None:
            counts["finished"] += 1
            print(f"framer.reproduce: {run.key.dirname} done in {time.time() - t0:.0f} s", flush=True)
        else:
            counts["failed"] += 1
            message = outcome.message or "fit ended without a test MAE in its results"
            run.root.mark_failed(message)
            print(f"framer.reproduce: {run.key.dirname} FAILED: {message.splitlines()[0]}", file=sys.stderr)
    return counts


def parse_shard(text: str) -> tuple[int, int]:
    i, _, n = text.partition("/")
    shard = (int(i), int(n or 1))
    if not 0 <= shard[0] < shard[1]:
        raise argparse.ArgumentTypeError(f"--shard must be i/n with 0 <= i < n, got {text}")
    return shard


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m framer.reproduce", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="the embedded-data stand-in (conf/reproduce/smoke.yaml)")
    parser.add_argument("--manifest", help="manifest YAML (default conf/reproduce/paper.yaml)")
    parser.add_argument("--paper", default=str(PAPER_RESULTS), help="paper results YAML (rows and columns)")
    parser.add_argument("--runs-dir", type=Path, help="override the manifest's runs_dir")
    parser.add_argument("--seeds", type=int, nargs="+", help="override the manifest's seeds")
    parser.add_argument("--models", nargs="+", help="only these model presets")
    parser.add_argument("--columns", nargs="+", help="only these columns (e.g. mp/e_form)")
    parser.add_argument("--launcher", choices=LAUNCHERS, help="override the manifest's launcher")
    parser.add_argument("--shard", type=parse_shard, default=(0, 1), help="i/n: run every n-th run from the i-th")
    parser.add_argument("--max-runs", type=int, help="start at most this many runs")
    parser.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    args = parser.parse_args(argv)

    path = Path(args.manifest) if args.manifest else MANIFESTS["smoke" if args.smoke else "paper"]
    with exit_codes("framer", user_errors=(OSError, ValueError, yaml.YAMLError)):
        paper = PaperTable.load(args.paper)
        manifest = Manifest.load(path, paper)
        for name in ("runs_dir", "seeds", "models", "columns", "launcher"):
            if getattr(args, name) is not None:
                setattr(manifest, name, getattr(args, name))
        runs = plan(manifest, paper)
    if args.dry_run:
        for run in runs:
            args = replace(run.spec, resume=run.root.last_checkpoint() is not None).args()
            print(f"{run.root.path}: python -m framer.cli {' '.join(args)}")
        return 0
    write_manifest(manifest, runs)
    t0 = time.time()
    counts = execute(runs, manifest.launcher, args.shard, args.max_runs)
    print(f"framer.reproduce: {counts} in {time.time() - t0:.0f} s; table: python -m framer.report "
          f"--runs {manifest.runs_dir} --out <dir>; ensembles: python -m framer.ensemble --runs {manifest.runs_dir} "
          "--out <dir>")  # fmt: skip
    return EXIT_SIGTERM if counts["interrupted"] else 0


if __name__ == "__main__":
    sys.exit(main())
