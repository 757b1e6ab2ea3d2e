"""Predict a property for CIF/POSCAR files with a trained model, checkpoint or run directory, or an ensemble.

Usage::

    python -m framer.predict --model models/mp_e_form --inputs my_structures/ extra.cif --out predictions.csv
    python -m framer.predict --model m1 m2 m3 --inputs my_structures/ --out predictions.csv   # + std column

``--model`` is a model folder (``python -m framer.export``), an ensemble folder, a checkpoint (a local path or an
fsspec URL) or a run directory (its ``last.ckpt``); several make an ensemble (``--ckpt``: one of them). Input
directories are searched recursively for ``*.cif``, ``*.vasp``, ``*.poscar``, ``POSCAR*`` and ``CONTCAR*``; unusable
files are named on stderr and skipped. The CSV has ``id`` (the path relative to its input directory, without the
extension) and ``prediction`` in the target's units (for an ensemble the members' mean, and their ``std``); SWA
weights are used when the checkpoint has them (what the paper reports).

The command-line face of :mod:`framer.predictor` (``framer.load(path).predict(...)`` in Python): a missing, corrupt or
code-carrying checkpoint or model folder is one ``framer: error:`` line and exit code 2, and nothing in it runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from framer.errors import UserError, exit_codes
from framer.io import write_csv_rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m framer.predict",
        description="Predict with trained models for CIF/POSCAR files; writes a CSV of id, prediction[, std].",
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", nargs="+", help="model or ensemble folders, checkpoints or run directories")
    which.add_argument("--ckpt", help="a checkpoint (.ckpt) or run directory of `framer.cli fit`")
    parser.add_argument("--inputs", required=True, nargs="+", help="structure files and/or directories")
    parser.add_argument("--out", default="predictions.csv", help="CSV to write (default: predictions.csv)")
    parser.add_argument("--batch-size", type=int, default=16, help="crystals per forward pass (default: 16)")
    parser.add_argument("--weights", choices=("swa", "raw"), help="SWA average or raw weights (default: the module's)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: auto)")
    args = parser.parse_args(argv)
    with exit_codes("framer", user_errors=(OSError,)):
        from framer.predictor import collect_inputs, load

        files = collect_inputs(args.inputs)
        if not files:
            raise UserError(f"no CIF/POSCAR files in {' '.join(args.inputs)}")
        models = args.model if args.model and len(args.model) > 1 else (args.model or [args.ckpt])[0]
        predictor = load(models, args.device, args.weights, args.batch_size)
        rows, skipped = predictor.predict_files(
            files, on_skip=lambda path, reason: print(f"framer.predict: skipped {path}: {reason}", file=sys.stderr)
        )
        if not rows:
            raise UserError(f"none of the {len(files)} input files could be used")
        write_csv_rows(args.out, ("id", *predictor.columns), rows)
    info = predictor.target
    what = f" of {info['target']}" if info.get("target") else ""
    units = f" ({info['target_units']})" if info.get("target_units") else ""
    print(f"framer.predict: wrote {len(rows)} predictions{what}{units} to {args.out}; skipped {len(skipped)} file(s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
