"""Export trained models as small, safe, self-describing folders.

    python -m framer.export runs/mp_e_form/version_0 models/mp_e_form          # one model
    python -m framer.export runs/a runs/b runs/c models/mp_e_form-ensemble       # an ensemble of three

A source is a run directory (its ``last.ckpt``: the SWA average when the run has one) or a checkpoint; ``--best``
takes a run's best-val checkpoint instead. A model folder holds exactly three files:

- ``model.json``: format version, framer and torch versions, git commit, the network's class and init arguments,
  the target's name, units and standardisation (train mean and std), the data set and split fingerprints, which
  weights (``swa``, ``best-val`` or ``last``) and their test MAE from the run's ``results.json``, and what the data
  covered (elements seen in training, largest cell tested) when the run's data can be read again;
- ``weights.safetensors``: the network's tensors (no pickle anywhere in the folder);
- ``README.md``: a model card generated from ``model.json``.

Several sources make an ensemble folder: ``ensemble.json`` listing ``member_<i>/`` model folders. ``framer.load``
reads both (:mod:`framer.predictor`). A non-empty output folder is refused unless ``--force``; the folder is written
next to its final place and renamed into it, so an error leaves nothing half-written.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from framer.errors import UserError, exit_codes
from framer.instantiate import build, to_config
from framer.io import fsync_dir, temp_path, to_plain
from framer.module import CrystalRegressor
from framer.predictor import (
    CARD_FILE,
    ENSEMBLE_FILE,
    ENSEMBLE_FORMAT,
    FORMAT_VERSION,
    MODEL_FILE,
    MODEL_FORMAT,
    WEIGHTS_FILE,
    checkpoint_of,
)
from framer.provenance import framer_version
from framer.rundir import RunDir, resolve


class ExportError(UserError, ValueError):
    """A source or output folder the export cannot use."""


def model_files(
    source: str | os.PathLike, best: bool = False, coverage: Mapping[str, Any] | None = None
) -> dict[str, bytes]:
    """The three files of the model folder of a run directory or checkpoint (name -> content). ``coverage``: what
    the data covered (default: read from the run's data, :func:`data_coverage`)."""
    from safetensors.torch import save

    ckpt = best_checkpoint(source) if best else checkpoint_of(source)
    module = CrystalRegressor.load_from_checkpoint(ckpt, map_location="cpu")
    run = RunDir.of_checkpoint(ckpt)
    info = run.read_info() if run else {}
    results = (run.read_results() if run else None) or {}
    is_best = best or _same_file(ckpt, results.get("best_checkpoint"))
    use_swa = not is_best and module.has_swa and module.eval_weights == "swa"
    network = module.swa_model.module if use_swa else module.model
    which = "best-val" if is_best else "swa" if use_swa else "last"
    metric = (results.get("metrics") or {}).get("test_best/mae" if is_best else "test/mae")
    tested = results.get("test_weights") == ("swa" if use_swa else "raw")  # the weights the run's test used
    known = is_best or (_same_file(ckpt, results.get("last_checkpoint")) and tested)
    try:
        config = to_config(network)  # class path and constructor arguments, checked to rebuild the same shapes
    except ValueError as err:
        raise ExportError(f"{ckpt}: cannot be exported: {err}") from None
    target = module.target_info or {k: info.get(k) for k in ("dataset_name", "target", "target_units")}
    meta = {
        "format": MODEL_FORMAT,
        "format_version": FORMAT_VERSION,
        "framer_version": framer_version(),
        "torch_version": torch.__version__,
        "git_commit": info.get("git_commit"),  # of the code that trained the model (run.json)
        "model": config,
        "target": {
            "dataset": target.get("dataset_name"),
            "name": target.get("target"),
            "units": target.get("target_units"),
            "mean": float(module.target_mean),
            "std": float(module.target_std),
        },
        "data": {"splits": info.get("splits"), **(data_coverage(run) if coverage is None and run else coverage or {})},
        "weights": which,
        "test_mae": float(metric) if known and isinstance(metric, (int, float)) else None,
        "source": {"checkpoint": Path(str(ckpt)).name, "epochs": results.get("epochs"), "swa_steps": module.swa_steps},
    }
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in network.state_dict().items()}
    return {
        MODEL_FILE: (json.dumps(to_plain(meta), indent=2, sort_keys=True) + "\n").encode(),
        WEIGHTS_FILE: save(tensors, metadata={"format": "pt"}),
        CARD_FILE: model_card(meta).encode(),
    }


def best_checkpoint(source: str | os.PathLike) -> Path:
    """The best-val checkpoint of a run directory (named in its ``results.json``)."""
    run = resolve(source) if Path(source).is_dir() else None
    best = ((run.read_results() or {}) if run else {}).get("best_checkpoint")
    if not best or not Path(best).is_file():
        raise ExportError(f"{source}: no best-val checkpoint recorded in the run's results.json")
    return Path(best)


def data_coverage(run: RunDir) -> dict[str, Any]:
    """Elements of the training split and the largest test cell (atoms), by rebuilding the run's datamodule from
    its ``config.yaml`` (classes checked by the allow-list); {} when that fails (e.g. the data is not here)."""
    from lightning.pytorch import LightningDataModule

    try:
        config = yaml.safe_load(run.config.read_text())
        datamodule = build(config["data"], LightningDataModule, str(run.config), "data")
        train, test = datamodule.dataset("train"), datamodule.dataset("test")
        elements = sorted({int(z) for record in train for z in record.atomic_numbers})
        return {"train_elements": elements, "max_test_atoms": max(record.num_atoms for record in test)}
    except Exception:  # best effort: the card then says the coverage is unknown
        return {}


def model_card(meta: Mapping[str, Any]) -> str:
    """``README.md`` of a model folder."""
    from pymatgen.core import Element

    target, data = meta["target"], meta.get("data") or {}
    units = target.get("units") or "target units"
    mae = meta.get("test_mae")
    metric = f"{mae:.4g} {units}" if isinstance(mae, float) else "not recorded for these weights"
    elements = data.get("train_elements")
    symbols = ", ".join(Element.from_Z(z).symbol for z in elements) if elements else "not recorded"
    cls = meta["model"]["class_path"]
    commit = (meta.get("git_commit") or "unknown")[:12]
    return f"""# {target.get("name") or "framer model"} ({target.get("dataset") or "unknown data set"})

A {cls} network exported by framer {meta["framer_version"]} (torch {meta["torch_version"]}; trained at commit
{commit}). Weights: {meta["weights"]} (`weights.safetensors`, no pickle); all facts in `model.json`.

- **Predicts**: {target.get("name")} in {units}, for one crystal structure at a time (periodic, ordered sites).
- **Data**: {target.get("dataset")}; split fingerprints in `model.json` (`data.splits`).
- **Metric**: test MAE {metric}.
- **Intended use**: screening and ranking crystals like those of the training data; not a substitute for DFT.
- **Known limits**: elements seen in training: {symbols}; largest test cell:
  {data.get("max_test_atoms") or "not recorded"} atoms. Outside these ranges predictions are extrapolations.

```python
import framer
predictor = framer.load("<this folder>")
values = predictor.predict(["my.cif"])   # {units}
```
"""


def ensemble_files(sources: Sequence[str | os.PathLike], best: bool = False) -> dict[str, bytes]:
    """The files of an ensemble folder: ``member_<i>/`` model folders and ``ensemble.json``."""
    files: dict[str, bytes] = {}
    members, metas = [], []
    for i, source in enumerate(sources):
        coverage = None if i == 0 else {k: v for k, v in metas[0]["data"].items() if k != "splits"}  # read once
        member_files = model_files(source, best, coverage)
        files.update({f"member_{i}/{name}": data for name, data in member_files.items()})
        members.append(f"member_{i}")
        metas.append(json.loads(member_files[MODEL_FILE]))
    summary = {"format": ENSEMBLE_FORMAT, "format_version": FORMAT_VERSION, "members": members}
    files[ENSEMBLE_FILE] = (json.dumps(summary, indent=2) + "\n").encode()
    first, maes = metas[0], [meta["test_mae"] for meta in metas]
    files[CARD_FILE] = (
        f"# Ensemble of {len(members)} framer models: {first['target']['name']}\n\n"
        f'`framer.load("<this folder>").predict(structures, return_std=True)` gives the members\' mean and their '
        f"standard deviation. Members: {', '.join(members)} (each with its own model card); their test MAEs: "
        f"{', '.join('n/a' if m is None else f'{m:.4g}' for m in maes)} {first['target']['units'] or ''}.\n"
    ).encode()
    return files


def write_folder(out: str | os.PathLike, files: Mapping[str, bytes], force: bool = False) -> Path:
    """Write ``files`` (relative path -> content) as the folder ``out``, atomically (temporary folder + rename);
    ExportError for a non-empty ``out`` unless ``force`` (which replaces it)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise ExportError(f"{out} exists and is not empty (use --force to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(out)
    old = tmp.with_suffix(".old")
    try:
        for name, data in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_bytes(data)
        if out.is_dir():
            out.rename(old)
        elif out.exists():
            out.unlink()
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    fsync_dir(out.parent)
    return out


def export(
    sources: str | os.PathLike | Sequence[str | os.PathLike],
    out: str | os.PathLike,
    best: bool = False,
    force: bool = False,
) -> Path:
    """Export one source as a model folder, or several as an ensemble folder; returns ``out``."""
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:  # before any work
        raise ExportError(f"{out} exists and is not empty (use --force to replace it)")
    files = model_files(sources[0], best) if len(sources) == 1 else ensemble_files(sources, best)
    return write_folder(out, files, force)


def _same_file(path: str | Path, other: Any) -> bool:
    return isinstance(other, str) and bool(other) and Path(other).resolve() == Path(path).resolve()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m framer.export", description=__doc__.splitlines()[0])
    parser.add_argument("sources", nargs="+", help="run directories or checkpoints (several: an ensemble)")
    parser.add_argument("out", help="the model (or ensemble) folder to write")
    parser.add_argument("--best", action="store_true", help="the best-val checkpoint instead of the final weights")
    parser.add_argument("--force", action="store_true", help="replace a non-empty output folder")
    args = parser.parse_args(argv)
    with exit_codes("framer", user_errors=(OSError,)):
        out = export(args.sources, args.out, args.best, args.force)
    print(f"framer.export: wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
