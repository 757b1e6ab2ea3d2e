"""``python -m framer.matbench --task matbench_log_kvrh [--folds 0 1 2 3 4] [--config ...] [--set key=value ...]``.

For each fold: ``fit`` (then test) with the fold's :class:`~framer.matbench.MatbenchDataModule` (validation drawn
from the fold's training rows only, seeded), in ``<out>/<task>/fold<k>/``. Finished folds are skipped and
interrupted ones resume from ``last.ckpt``. Then every finished fold's test predictions are recorded with
matbench's ``MatbenchTask.record`` and written to ``<out>/<task>/results.json.gz`` (matbench's layout and hash),
with per-fold and mean scores in ``scores.json``.

Data: matminer's ``<task>.json.gz`` in ``--data-home`` or ``$MATMINER_DATA`` (never downloaded). Folds: the matbench
package's validation file, or ``--validation-file`` (same layout) for data that are not the real task's.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from framer.errors import EXIT_SIGTERM, UserError, exit_codes
from framer.io import write_json
from framer.launch import RunSpec, run
from framer.matbench import tasks
from framer.rundir import RunRoot

DEFAULT_CONFIGS = ["conf/default.yaml"]


def parse_set(items: Sequence[str]) -> dict[str, Any]:
    """``["a.b=1", "c=[1, 2]"]`` -> ``{"a.b": 1, "c": [1, 2]}`` (values read as YAML)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"--set expects key=value, got {item!r}")
        out[key.removeprefix("--")] = yaml.safe_load(value)
    return out


def fold_spec(args: argparse.Namespace, fold: int, out_dir: Path, resume: bool) -> RunSpec:
    """The ``fit`` of one fold: the configs, the fold's data module, the user's overrides, the run dir."""
    data = {
        "class_path": "framer.matbench.MatbenchDataModule",
        "init_args": {
            "task": args.task,
            "fold": fold,
            "val_fraction": args.val_fraction,
            "split_seed": args.split_seed,
            "data_home": args.data_home,
            "validation_file": args.validation_file,
            "batch_size": args.batch_size,
            "test_batch_size": args.test_batch_size,
        },
    }
    overrides = {
        "data": data,
        **parse_set(args.set or []),
        "seed_everything": args.seed + fold,
        "tracking.save_dir": str(out_dir),
        "tracking.run_name": f"fold{fold}",
        "tracking.experiment_name": args.experiment_name or args.task,
    }
    return RunSpec(args.config or DEFAULT_CONFIGS, overrides, resume=resume, quiet=args.quiet)


def train_folds(args: argparse.Namespace, out_dir: Path) -> dict[int, str]:
    """Fit and test every requested fold that has not finished; returns {fold: status}. A fold stopped by
    SIGTERM ("interrupted") ends the loop."""
    status = {}
    for fold in args.folds:
        root = RunRoot(out_dir / f"fold{fold}")
        if root.finished:
            status[fold] = "skipped (finished)"
            continue
        root.path.mkdir(parents=True, exist_ok=True)
        root.clear_failed()
        resume = root.last_checkpoint() is not None
        t0 = time.time()
        print(f"framer.matbench: {args.task} fold {fold}: {'resuming' if resume else 'training'}", flush=True)
        outcome = run(fold_spec(args, fold, out_dir, resume), args.launcher, log=root.launch_log)
        if outcome.interrupted:
            status[fold] = "interrupted"
            print(f"framer.matbench: fold {fold} stopped by SIGTERM; run again to resume", file=sys.stderr)
            break
        finished = root.latest_finished()
        if outcome.ok and finished is not None:
            status[fold] = f"finished in {time.time() - t0:.0f} s"
        else:
            message = outcome.message or "no test MAE in the fold's results"
            root.mark_failed(message)
            status[fold] = "FAILED"
            print(f"framer.matbench: fold {fold} FAILED: {message.splitlines()[0]}", file=sys.stderr)
    return status


def record(args: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    """Record every finished fold with matbench's API; write results.json.gz and scores.json."""
    frame = tasks.load_frame(args.task, args.data_home)
    validation = tasks.load_validation(args.task, args.validation_file)
    bench = tasks.make_benchmark(args.task, frame, validation)
    scores: dict[str, Any] = {}
    for fold in range(tasks.N_FOLDS):
        finished = RunRoot(out_dir / f"fold{fold}").latest_finished()
        if finished is None:
            continue
        predictions, metrics = pd.read_csv(finished.predictions()), finished.read_results() or {}  # final (SWA)
        test_ids = validation[f"fold_{fold}"]["test"]
        missing = sorted(set(test_ids) - set(predictions["id"].astype(str)))
        if missing:  # structures the data module could not use: predict the fold's training mean
            train_mean = float(frame.loc[validation[f"fold_{fold}"]["train"], "target"].mean())
            filler = pd.DataFrame({"id": missing, "prediction": train_mean})
            predictions = pd.concat([predictions[["id", "prediction"]], filler], ignore_index=True)
            print(f"framer.matbench: fold {fold}: {len(missing)} unusable test structures get the train mean")
        params = {
            "framer_run_dir": str(metrics.get("run_dir", finished.path)),
            "test_weights": str(metrics.get("test_weights", "")),
            "epochs": int(metrics.get("epochs", 0)),
            "filled_with_train_mean": len(missing),
        }
        fold_scores = tasks.record_fold(bench, args.task, fold, predictions, params=params)
        scores[f"fold_{fold}"] = {k: float(v) for k, v in fold_scores.items()}
    mb_task = bench.tasks_map[args.task]
    complete = mb_task.all_folds_recorded
    if complete:
        mb_task.validate()
    summary = {
        "task": args.task,
        "folds_recorded": sorted(scores),
        "complete": complete,
        "folds": scores,
        "mae_mean": float(np.mean([s["mae"] for s in scores.values()])) if scores else None,
        "mae_std": float(np.std([s["mae"] for s in scores.values()])) if scores else None,
        "unit": tasks.task_metadata(args.task).get("unit"),
        "validation_file": args.validation_file or "matbench package (matbench_v0.1_validation.json)",
    }
    if scores:
        path = tasks.write_results(bench, out_dir / "results.json.gz")
        summary["results"] = str(path)
    write_json(out_dir / "scores.json", summary)
    return summary


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m framer.matbench",
        description="Train framer on Matbench v0.1 folds and record the results with matbench's API.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 2)[2],
    )
    parser.add_argument("--task", default="matbench_log_kvrh", choices=tasks.STRUCTURE_TASKS_REGRESSION)
    parser.add_argument("--folds", type=int, nargs="+", default=list(range(tasks.N_FOLDS)))
    parser.add_argument("--config", action="append", help="base config (repeatable; default conf/default.yaml)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="override, e.g. trainer.max_epochs=5")
    parser.add_argument("--out", default="runs/matbench", help="runs root; the task's runs go to <out>/<task>/")
    parser.add_argument("--data-home", default=None, help="directory of <task>.json.gz (default $MATMINER_DATA)")
    parser.add_argument("--validation-file", default=None, help="fold ids (default: the matbench package's)")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="share of each fold's train rows for val")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the inner train/val draw")
    parser.add_argument("--seed", type=int, default=123, help="seed_everything of fold k is seed + k")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--test-batch-size", type=int, default=1)
    parser.add_argument("--experiment-name", default=None, help="MLflow experiment (default: the task)")
    parser.add_argument("--launcher", choices=("subprocess", "inprocess"), default="subprocess")
    parser.add_argument("--no-quiet", dest="quiet", action="store_false", help="keep the progress bar")
    parser.add_argument("--record-only", action="store_true", help="only record the folds that finished")
    args = parser.parse_args(argv)
    bad = [f for f in args.folds if not 0 <= f < tasks.N_FOLDS]
    if bad:
        parser.error(f"folds must be 0..{tasks.N_FOLDS - 1}, got {bad}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with exit_codes("framer", user_errors=(yaml.YAMLError,)):
        parse_set(args.set or [])
        if not tasks.data_file(args.task, args.data_home).is_file():
            raise UserError(f"matbench data file {tasks.data_file(args.task, args.data_home)} not found")
    out_dir = Path(args.out) / args.task
    out_dir.mkdir(parents=True, exist_ok=True)
    if not args.record_only:
        status = train_folds(args, out_dir)
        for fold, state in status.items():
            print(f"framer.matbench: fold {fold}: {state}")
        if "interrupted" in status.values():
            return EXIT_SIGTERM
    summary = record(args, out_dir)
    if summary["folds_recorded"]:
        print(
            f"framer.matbench: {args.task}: folds {summary['folds_recorded']} recorded; MAE "
            f"{summary['mae_mean']:.4g} ± {summary['mae_std']:.2g} {summary['unit']}; "
            f"{'all folds, validated by matbench' if summary['complete'] else 'incomplete'} -> {summary['results']}"
        )
    else:
        print("framer.matbench: no finished fold to record", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
