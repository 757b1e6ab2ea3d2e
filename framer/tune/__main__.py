"""``python -m framer.tune --sweep sweeps/<study>.yaml [--storage URL] [--n-trials N] [--devices-per-trial N]``.

Start several workers on one study to run trials in parallel (one device each), e.g. one per GPU::

    CUDA_VISIBLE_DEVICES=0 python -m framer.tune --sweep sweeps/frames.yaml &
    CUDA_VISIBLE_DEVICES=1 python -m framer.tune --sweep sweeps/frames.yaml &

The sweep's ``n_trials`` is the total over all workers. Re-running the command resumes the study.
``--figures-only`` redraws the study's figures (``<study-dir>/figures``) from its storage and runs no trial.
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from framer.errors import UserError, exit_codes
from framer.rundir import FIGURES
from framer.tune.sweep import Sweep


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m framer.tune",
        description="Optuna study over framer's LightningCLI configs, tracked in MLflow.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 2)[2],
    )
    parser.add_argument("--sweep", required=True, help="sweep file (sweeps/<study>.yaml)")
    parser.add_argument(
        "--storage",
        help="journal:<path>, sqlite:///<path> or postgresql://user:pass@host/db "
        "(default: journal file <study-dir>/journal.log)",
    )
    parser.add_argument(
        "--n-trials", type=int, help="trials this worker runs at most (default: until the budget is used)"
    )
    parser.add_argument(
        "--devices-per-trial",
        type=int,
        default=1,
        help="1: trials run in this process on one device; N > 1: each trial is a `python -m framer.cli fit` "
        "subprocess with Lightning DDP over N devices",
    )
    parser.add_argument(
        "--trial-timeout", type=float, help="seconds before a subprocess (DDP) trial is killed and failed"
    )
    parser.add_argument("--study-dir", help="study directory (default sweeps/<study>)")
    parser.add_argument("--tracking-uri", help="MLflow URI (default $MLFLOW_TRACKING_URI or sqlite)")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    parser.add_argument("--no-figures", action="store_true", help="skip the study figures")
    parser.add_argument("--figures-only", action="store_true", help="only draw the study figures; run no trial")
    args = parser.parse_args(argv)
    with exit_codes("framer.tune", (ValueError, KeyError)):  # SweepError is a ValueError; KeyError: no such study
        run(args)


def run(args: argparse.Namespace) -> None:
    if args.devices_per_trial < 1:
        raise UserError("--devices-per-trial must be >= 1")
    from framer.tune.runner import best_trial, default_study_dir, study_figures, tune

    if args.figures_only:
        from framer.tune.storage import load_study_from_dir

        sweep = Sweep.load(args.sweep)
        study_dir = Path(args.study_dir) if args.study_dir else default_study_dir(sweep)
        if args.storage is None and not (study_dir / "journal.log").is_file():
            raise FileNotFoundError(f"no study in {study_dir} (no journal.log); pass --study-dir or --storage")
        study = load_study_from_dir(study_dir, args.storage, sweep.name)
        for path in study_figures(study, study_dir / FIGURES).values():
            print(path)
        return
    study = tune(
        args.sweep,
        storage=args.storage,
        n_trials=args.n_trials,
        devices_per_trial=args.devices_per_trial,
        study_dir=args.study_dir,
        tracking_uri=args.tracking_uri,
        mlflow=not args.no_mlflow,
        figures=not args.no_figures,
        trial_timeout=args.trial_timeout,
    )
    best = best_trial(study)
    print(f"framer.tune: study {study.study_name!r}: {dict(Counter(t.state.name for t in study.trials))}")
    if best is not None:
        print(f"framer.tune: best trial {best.number}: {best.value:.6g} with {best.params}")


if __name__ == "__main__":
    main()
