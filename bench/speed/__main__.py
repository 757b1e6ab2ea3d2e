"""``python -m bench.speed``: speed and memory of every preset -> bench/results/<host>.{json,md,png}.

Run from the repository root. Examples:
    python -m bench.speed                              # everything (about 20-30 min on a 2-core CPU)
    python -m bench.speed --quick                      # a few minutes: fewer repeats, smaller batches and sweep
    python -m bench.speed --against REV                # also measure revision REV's framer with the same harness
    python -m bench.speed --presets crystalformer crystalframer --only ref
    python -m bench.speed --compile --only ref --presets crystalformer
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from bench.speed import report, runner

ALIASES = {"former": "crystalformer", "framer": "crystalframer", "max": "crystalframer"}


def preset_name(name: str) -> str:
    """Accept full preset names and short forms: lightweight, pca, lattice, static, weighted_pca, former, framer."""
    name = ALIASES.get(name, name)
    if name not in runner.ALL_PRESETS and f"crystalframer-{name}" in runner.ALL_PRESETS:
        name = f"crystalframer-{name}"
    if name not in runner.ALL_PRESETS:
        raise argparse.ArgumentTypeError(f"unknown preset {name!r}; choose from {', '.join(runner.ALL_PRESETS)}")
    return name


def override(text: str) -> tuple[str, object]:
    """KEY=VALUE with VALUE parsed as JSON when possible (numbers, true/false, null), else a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.speed",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="fewer repeats, MP-like batch of 16, sweep up to 64 atoms")
    p.add_argument("--presets", nargs="+", type=preset_name, metavar="PRESET", help="default: all seven")
    p.add_argument(
        "--only",
        nargs="+",
        choices=("ref", "paired", "mp", "sweep"),
        help="parts to run (default: ref, paired, mp and sweep)",
    )
    p.add_argument("--mp-batch", type=int, help="MP-like inference batch size (default 128; quick 16)")
    p.add_argument("--mp-train-batch", type=int, help="MP-like training batch size (default 64; quick 16)")
    p.add_argument("--sweep-atoms", nargs="+", type=int, metavar="N", help="default 8 16 ... 512 (quick: to 64)")
    p.add_argument("--sweep-presets", nargs="+", type=preset_name, metavar="PRESET", help="default: former, framer")
    p.add_argument("--repeats", type=int, help="timed calls per stage (median; default 3)")
    p.add_argument("--batch1-repeats", type=int, help="timed calls of batch-1 inference (default 10, quick 5)")
    p.add_argument("--warmup", type=int, help="untimed calls before timing (default 1)")
    p.add_argument(
        "--budget", type=float, help="stop repeating once a stage's timed calls took this many s (60; quick 2)"
    )
    p.add_argument("--timeout", type=float, help="seconds per measuring subprocess before it is killed (1800)")
    p.add_argument(
        "--rounds", type=int, help="measure the ref cases this many times round-robin, keep the median (default 1)"
    )
    p.add_argument(
        "--paired-rounds",
        type=int,
        help="rounds of interleaved training steps (crystalformer, crystalframer, lightweight) in one process (9)",
    )
    p.add_argument(
        "--against",
        metavar="REV",
        help="also measure this git revision's framer (any commit, branch or tag) side by side",
    )
    p.add_argument("--against-presets", nargs="+", type=preset_name, metavar="PRESET", help="default: former, framer")
    p.add_argument("--compile", action="store_true", help="also measure torch.compile'd models on the reference batch")
    p.add_argument("--compile-presets", nargs="+", type=preset_name, metavar="PRESET", help="default: former, framer")
    p.add_argument("--threads", type=int, help="torch threads in the measuring processes (default: torch's)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--seed", type=int, default=0, help="model init and MP-like/sweep crystals")
    p.add_argument(
        "--override",
        action="append",
        type=override,
        default=[],
        metavar="KEY=VALUE",
        help="model argument for every preset, e.g. --override num_layers=1 (repeatable; for experiments and tests)",
    )
    p.add_argument("--out", default="bench/results", help="output directory (default bench/results)")
    p.add_argument("--name", help="file stem (default: the host name; -quick/-partial appended for smaller runs)")
    p.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)  # tests: no subprocesses
    p.add_argument("--ref-crystals", type=int, help=argparse.SUPPRESS)  # tests: a prefix of the reference batch
    return p


def suffix(plan: runner.Plan) -> str:
    """Empty for a full run, else "-quick" or "-partial" (so smaller runs never overwrite the full run's files)."""
    if plan.quick:
        return "-quick"
    full = runner.Plan()
    partial = (
        set(plan.presets) != set(full.presets)
        or set(plan.cases) != set(full.cases)
        or (plan.sweep_atoms != full.sweep_atoms or not plan.sweep)
        or not plan.paired
        or plan.overrides
        or plan.ref_crystals != full.ref_crystals
        or plan.in_process
    )
    return "-partial" if partial else ""


def plan_from_args(args: argparse.Namespace) -> runner.Plan:
    changes = {
        key: value
        for key, value in {
            "presets": args.presets,
            "mp_batch": args.mp_batch,
            "mp_train_batch": args.mp_train_batch,
            "sweep_atoms": args.sweep_atoms,
            "sweep_presets": args.sweep_presets,
            "repeats": args.repeats,
            "batch1_repeats": args.batch1_repeats,
            "warmup": args.warmup,
            "budget": args.budget,
            "timeout": args.timeout,
            "rounds": args.rounds,
            "paired_rounds": args.paired_rounds,
            "against": args.against,
            "against_presets": args.against_presets,
            "compile_presets": args.compile_presets,
            "threads": args.threads,
            "ref_crystals": args.ref_crystals,
        }.items()
        if value is not None
    }
    if args.only:
        changes["cases"] = [case for case in runner.CASES if case in args.only]
        changes["sweep"] = "sweep" in args.only
        changes["paired"] = "paired" in args.only
    changes.update(
        compile=args.compile,
        device=args.device,
        dtype=args.dtype,
        seed=args.seed,
        overrides=dict(args.override),
        in_process=args.in_process,
    )
    return runner.Plan.quick_plan(**changes) if args.quick else runner.Plan(**changes)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    plan = plan_from_args(args)
    if plan.in_process and plan.against:
        parser().error("--in-process cannot be combined with --against")
    start = time.perf_counter()

    def log(line: str) -> None:
        print(f"[{time.perf_counter() - start:7.0f} s] {line}", file=sys.stderr, flush=True)

    results = runner.run(plan, log)
    name = args.name or results["system"]["host"] + suffix(plan)
    paths = report.write(results, args.out, name)
    for row in results["targets"]:
        if row["value"] is not None:
            met = {True: "met", False: "NOT met", None: ""}[row["met"]]
            ratio = f" ratio {row['ratio']:.3g}" if row["ratio"] is not None else ""
            cpu = ""
            if row.get("value_cpu") is not None and row.get("ratio_cpu") is not None:
                met_cpu = {True: "met", False: "NOT met", None: ""}[row["met_cpu"]]
                cpu = f"; CPU s: {report.num(row['value_cpu'])} ratio {row['ratio_cpu']:.3g} {met_cpu}"
            print(f"{row['figure']}: {report.num(row['value'])} {row['unit']}{ratio} {met}{cpu}".rstrip())
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
