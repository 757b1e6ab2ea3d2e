"""``make demo``: Crystalformer and CrystalFramer, small, on the embedded Ewald data set, on CPU.

    python -m framer.demo [--models crystalformer crystalframer] [--threads N] [--set KEY=VALUE ...]

Each model is an ordinary run of the CLI (:mod:`framer.launch`) of the configs :func:`configs` lists, so it gets a
run directory under ``runs/demo/<model>/``, an MLflow run (experiment ``demo``) and the safety callbacks. The table
compares each model's test MAE (SWA weights) with a baseline that always predicts the training mean, all read from
the runs' files; it is also written to ``<save_dir>/summary.json`` with where and how it was measured.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from framer.errors import UserError, exit_codes, fail
from framer.io import write_json
from framer.launch import RunSpec, cli_value, run_inprocess
from framer.rundir import RunRoot

MODELS = {"crystalformer": "Crystalformer (distance only)", "crystalframer": "CrystalFramer (max frames)"}


def configs(model: str) -> list[str]:
    small = f"conf/model/{model}-small.yaml"
    return ["conf/default.yaml", "conf/data/ewald.yaml", small, "conf/trainer/laptop.yaml", "conf/demo/demo.yaml"]


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m framer.demo", description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config override, e.g. trainer.max_epochs=3 (repeatable)",
    )
    p.add_argument("--progress", action="store_true", help="show progress bars")
    p.add_argument(
        "--write-folder",
        metavar="DIR",
        help="instead: write embedded crystals as DIR/<id>.cif and "
        "DIR/id_prop.csv (a folder for README's 'your own data' recipe)",
    )
    p.add_argument("--num-crystals", type=int, default=1000, help="with --write-folder: how many (at most 8 atoms)")
    return p.parse_args(argv)


def write_folder(folder: Path, n: int) -> Path:
    """``n`` embedded Ewald crystals (seed 0, at most 8 atoms) as CIF files plus ``id_prop.csv`` (file, eV/atom)."""
    from framer.data.ewald import generate_structures

    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, structure in enumerate(generate_structures(n, seed=0, max_atoms=8)):
        energy = structure.properties.pop("ewald")
        structure.remove_oxidation_states()
        structure.to(filename=str(folder / f"ewald-{i:05d}.cif"))
        rows.append(f"ewald-{i:05d}.cif,{energy!r}\n")
    (folder / "id_prop.csv").write_text("".join(rows))
    return folder


def baseline_mae(run) -> float:
    """MAE on the test split of always predicting the training mean (``run.json``'s ``target_mean``)."""
    mean = float(run.read_info()["target_mean"])
    with run.predictions().open(newline="") as handle:
        errors = [abs(float(row["target"]) - mean) for row in csv.DictReader(handle)]
    return sum(errors) / len(errors)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    with exit_codes("framer"):
        if args.write_folder:
            folder = write_folder(Path(args.write_folder), args.num_crystals)
            print(f"framer demo: wrote {folder}/{{*.cif,id_prop.csv}}")
            return 0
        bad = [item for item in args.set if "=" not in item]
        if bad:
            raise UserError(f"--set takes KEY=VALUE, not {bad[0]!r}")
        overrides = {"threads": args.threads, **dict(item.split("=", 1) for item in args.set)}
        rows, baseline, load = [], None, os.getloadavg()[0]
        for model in args.models:
            spec = RunSpec(configs(model), {**overrides, "tracking.run_name": model}, quiet=not args.progress)
            save_dir = spec.overrides.get("tracking.save_dir", "runs/demo")
            print(f"framer demo: training {MODELS[model]}: python -m framer.cli {' '.join(spec.args())}", flush=True)
            started = time.monotonic()
            outcome = run_inprocess(spec)
            if not outcome.ok:  # the run's own exit code: 2 user error, 3 NaN, 143 SIGTERM
                fail("framer", outcome.message.splitlines()[0].removeprefix("framer.cli "), outcome.code)
            run = RunRoot(Path(save_dir) / model).latest()
            results, info = run.read_results() or {}, run.read_info()
            baseline = baseline_mae(run) if baseline is None else baseline
            rows.append(
                {
                    "model": model,
                    "description": MODELS[model],
                    "test_mae": results["metrics"]["test/mae"],
                    "test_mae_best_val": results["metrics"].get("test_best/mae"),
                    "num_params": info["num_params"],
                    "threads": info["threads"],
                    "seconds": round(time.monotonic() - started, 1),
                    "run_dir": str(run.path),
                }
            )
        summary = {
            "baseline_test_mae": baseline,
            "models": rows,
            "overrides": {k: cli_value(v) for k, v in overrides.items()},
            "measured": {
                "machine": f"{platform.node()}, {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}",
                "load_average_1min_at_start": round(load, 2),
                "commit": info.get("git_commit"),  # as the runs recorded it when they started
                "uncommitted_changes": info.get("git_dirty"),
                "total_seconds": round(sum(r["seconds"] for r in rows), 1),
            },
        }
        path = write_json(Path(save_dir) / "summary.json", summary)
        print(table(summary))
        print(f"summary: {path}")
    return 0


def table(summary: dict[str, Any]) -> str:
    """The README's table: model, test MAE, ratio to the baseline, parameters, seconds."""
    base = summary["baseline_test_mae"]
    lines = ["| model | test MAE (eV/atom) | vs. baseline | parameters | time |", "|---|---|---|---|---|"]
    lines.append(f"| mean-of-train baseline | {base:.4f} | 1.00x | – | – |")
    for r in summary["models"]:
        ratio = r["test_mae"] / base
        lines.append(
            f"| {r['description']} | {r['test_mae']:.4f} | {ratio:.2f}x | {r['num_params']:,} | {r['seconds']:.0f} s |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
