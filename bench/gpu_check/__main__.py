"""``python -m bench.gpu_check``: run the parts in order and write ``bench/results/<name>.{json,md}``."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import socket
import sys
import time
from pathlib import Path

from bench.gpu_check import harness, limit, numerics, pipeline, report, speed
from bench.gpu_check.harness import CheckConfig, Part

PARTS = {
    part.name: part
    for part in (
        Part("environment", "Environment", pipeline.environment, 10, 10),
        Part("correctness", "Correctness: device vs CPU", numerics.correctness, 50, 20),
        Part("mixed_precision", "Mixed precision vs float32", numerics.mixed_precision, 30, 15),
        Part("speed", "Training and inference speed", speed.speed, 70, 20),
        Part("memory", "Peak memory and the largest cell", speed.memory, 45, 15),
        Part("syncs", "Host-device synchronisations", speed.syncs, 15, 10),
        Part("loader", "Data pipeline", pipeline.loader, 25, 20),
        Part("compile", "torch.compile", speed.compile_check, 120, 20),
        Part("limit", "The physical limit", limit.limit, 35, 15),
        Part("cli_fit", "End to end: framer.cli fit", pipeline.cli_fit, 50, 45, pipeline.FIT_NEEDS),
        Part("pytest_gpu", "End to end: pytest -m gpu", pipeline.pytest_gpu, 25, 30, pipeline.PYTEST_NEEDS),
    )
}
TOTAL_BUDGET_S = {False: 450.0, True: 110.0}  # full run (8 minutes on one H100, with start-up margin), QUICK
RESULTS = harness.REPO / "bench" / "results"


class UserError(Exception):
    pass


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: every part in seconds (for the CPU)")
    parser.add_argument("--only", default="", help=f"comma-separated parts (default: all): {', '.join(PARTS)}")
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for <name>.json and <name>.md")
    parser.add_argument("--name", default=None, help="file name stem (default: <host>-gpu[-cpu][-quick|-partial])")
    parser.add_argument(
        "--isolate", choices=("auto", "yes", "no"), default="auto", help="each part in a child process (auto: on CUDA)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--limit-crystals",
        type=int,
        default=None,
        help="crystals of the JARVIS-like epoch the limit part counts (default: what the budget allows)",
    )
    parser.add_argument("--budget-scale", type=float, default=None, help="multiply every time budget")
    parser.add_argument("--child", nargs=2, metavar=("SPEC", "RESULT"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def output_name(args: argparse.Namespace) -> str:
    if args.name:
        return args.name
    name = f"{socket.gethostname().split('.')[0]}-gpu" + ("-cpu" if args.device == "cpu" and not args.quick else "")
    if args.quick:
        return name + "-quick"
    return name + "-partial" if args.only else name


def selected_parts(only: str) -> list[Part]:
    if not only:
        return list(PARTS.values())
    names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in PARTS]
    if unknown:
        raise UserError(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    return [PARTS[n] for n in PARTS if n in names]


def run(args: argparse.Namespace, argv: list[str]) -> dict:
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda but torch.cuda.is_available() is False (on a CPU: DEVICE=cpu QUICK=1)")
    parts = selected_parts(args.only)
    config = CheckConfig.make(
        args.device,
        args.quick,
        threads=args.threads,
        limit_crystals=args.limit_crystals,
        budget_scale=args.budget_scale,
    )
    harness.apply_threads(config)
    isolate = args.isolate == "yes" or (args.isolate == "auto" and args.device == "cuda")
    name = output_name(args)
    total_budget = TOTAL_BUDGET_S[args.quick] * config.budget_scale
    started = time.monotonic()
    results = {
        "run": {
            "host": socket.gethostname(),
            "device": args.device,
            "quick": args.quick,
            "mode": ("QUICK" if args.quick else "full sizes") + (", isolated parts" if isolate else ""),
            "command": "python -m bench.gpu_check " + shlex.join(argv),
            "isolate": isolate,
            "total_budget_s": total_budget,
            "complete": False,
        },
        "config": dataclasses.asdict(config),
        "parts": {},
    }
    for part in parts:
        left = total_budget - (time.monotonic() - started)
        if left <= 0:
            record = {"title": part.title, "status": "skipped", "reason": "total time budget spent", "figures": {}}
        else:
            scale = min(1.0, left / part.budget(config))  # the last parts share what is left
            part_config = dataclasses.replace(config, budget_scale=config.budget_scale * scale)
            record = harness.run_part(part, part_config, results["parts"], isolate)
        results["parts"][part.name] = record
        seconds, reason = record.get("seconds", 0.0), record.get("reason", "")
        print(f"gpu-check: {part.name:16s} {record['status']:8s} {seconds:7.1f} s  {reason}", flush=True)
        results["run"]["seconds"] = time.monotonic() - started
        report.write(results, args.out, name)
    results["run"]["complete"] = True
    json_path, md_path = report.write(results, args.out, name)
    print(f"gpu-check: wrote {json_path} and {md_path}")
    return results


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.child:
        return harness.child_main(*args.child, PARTS)
    try:
        run(args, argv)
    except UserError as error:
        print(f"framer: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
