"""Predict a property for CIF/POSCAR files with a trained checkpoint.

Usage::

    python -m framer.predict --ckpt runs/mp_e_form-crystalframer/version_0/checkpoints/last.ckpt \\
        --inputs my_structures/ extra.cif --out predictions.csv

Directories are searched recursively for ``*.cif``, ``*.vasp``, ``*.poscar``, ``POSCAR*`` and ``CONTCAR*``. Files
that cannot be read or are not usable crystals are reported by name on stderr and skipped. The CSV has one row per
usable file: ``id`` (the path relative to its input directory, without the extension) and ``prediction`` in the
target's physical units. By default the SWA weights are used when the checkpoint has them (what the paper reports).

The checkpoint (a local path or an fsspec URL) is read with ``weights_only=True`` and the classes it names are checked
before anything is imported (:mod:`framer.checkpoints`): a missing, corrupt or code-carrying checkpoint is one
``framer: error:`` line and exit code 2, and nothing in it runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from framer.data import collate_records
from framer.data.structures import InvalidStructureError, record_from_file
from framer.errors import UserError, exit_codes
from framer.io import write_csv_rows

STRUCTURE_SUFFIXES = (".cif", ".vasp", ".poscar")
STRUCTURE_PREFIXES = ("POSCAR", "CONTCAR")


class PredictError(UserError):
    """A problem with the command's inputs (reported as one line)."""


def is_structure_file(path: Path) -> bool:
    return path.suffix.lower() in STRUCTURE_SUFFIXES or path.name.upper().startswith(STRUCTURE_PREFIXES)


def collect_inputs(inputs: Sequence[str | Path]) -> list[tuple[str, Path]]:
    """(id, path) of every structure file named or found (recursively) in the given directories, in order."""
    found: list[tuple[str, Path]] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            for file in sorted(p for p in path.rglob("*") if p.is_file() and is_structure_file(p)):
                relative = file.relative_to(path)
                name = relative.with_suffix("") if file.suffix.lower() in STRUCTURE_SUFFIXES else relative
                found.append((name.as_posix(), file))
        elif path.is_file():
            found.append((path.stem if path.suffix.lower() in STRUCTURE_SUFFIXES else path.name, path))
        else:
            raise PredictError(f"input not found: {path}")
    seen: dict[str, int] = {}
    unique = []
    for id_, file in found:  # make ids unique without losing the file they came from
        count = seen.get(id_, 0)
        seen[id_] = count + 1
        unique.append((id_ if count == 0 else f"{id_}#{count}", file))
    return unique


def load_module(ckpt: str | Path, device: str | torch.device = "cpu"):
    """A CrystalRegressor (or subclass) from a checkpoint (checked first, see the module docstring), in eval mode."""
    from framer.module import CrystalRegressor

    module = CrystalRegressor.load_from_checkpoint(ckpt, map_location="cpu")
    return module.to(device).eval()


def predict_files(
    module,
    files: Iterable[tuple[str, Path]],
    batch_size: int = 16,
    weights: str | None = None,
    on_skip=None,
) -> tuple[list[tuple[str, float]], list[tuple[str, str]]]:
    """Predictions (id, value) for every usable file, and (file, reason) for every skipped one."""
    weights = weights or module.eval_weights
    device = next(iter(module.parameters())).device
    rows: list[tuple[str, float]] = []
    skipped: list[tuple[str, str]] = []
    pending = []

    def flush() -> None:
        if not pending:
            return
        batch = collate_records(pending).to(device)
        with torch.inference_mode():
            values = module(batch, weights).float().cpu().tolist()
        rows.extend(zip(batch.ids, values))
        pending.clear()

    for id_, path in files:
        try:
            pending.append(record_from_file(path, id=id_))
        except InvalidStructureError as err:
            reason = str(err)
            prefix = f"{path}: "
            reason = reason[len(prefix) :] if reason.startswith(prefix) else reason
            skipped.append((str(path), reason))
            if on_skip is not None:
                on_skip(str(path), reason)
            continue
        if len(pending) >= batch_size:
            flush()
    flush()
    return rows, skipped


def _device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m framer.predict",
        description="Predict with a trained checkpoint for CIF/POSCAR files; writes a CSV of id and prediction.",
    )
    parser.add_argument("--ckpt", required=True, help="checkpoint (.ckpt) written by `python -m framer.cli fit`")
    parser.add_argument("--inputs", required=True, nargs="+", help="structure files and/or directories")
    parser.add_argument("--out", default="predictions.csv", help="CSV to write (default: predictions.csv)")
    parser.add_argument("--batch-size", type=int, default=16, help="crystals per forward pass (default: 16)")
    parser.add_argument(
        "--weights", choices=("swa", "raw"), default=None, help="SWA average or raw weights (default: the module's)"
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: auto)")
    args = parser.parse_args(argv)
    with exit_codes("framer", user_errors=(OSError,)):
        files = collect_inputs(args.inputs)
        if not files:
            raise PredictError(f"no CIF/POSCAR files in {' '.join(args.inputs)}")
        module = load_module(args.ckpt, _device(args.device))

        def report(path: str, reason: str) -> None:
            print(f"framer.predict: skipped {path}: {reason}", file=sys.stderr)

        rows, skipped = predict_files(module, files, args.batch_size, args.weights, on_skip=report)
        if not rows:
            raise PredictError(f"none of the {len(files)} input files could be used")
        write_csv_rows(args.out, ("id", "prediction"), rows)
    info = getattr(module, "target_info", {}) or {}
    what = f" of {info['target']}" if info.get("target") else ""
    units = f" ({info['target_units']})" if info.get("target_units") else ""
    print(f"framer.predict: wrote {len(rows)} predictions{what}{units} to {args.out}; skipped {len(skipped)} file(s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
