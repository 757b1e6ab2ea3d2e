"""framer: CrystalFramer / Crystalformer crystal property prediction in pure PyTorch + Lightning.

The public API (everything else is implementation and may change)::

    import framer
    network = framer.CrystalFramer.preset("crystalframer")        # the model (framer.models)
    batch = framer.collate_structures([structure])                 # batches of crystals (framer.data)
    datamodule = framer.MPDataModule(target="e_form")               # the paper's data sets, your folder, Ewald
    module = framer.CrystalRegressor(network)                       # the paper's training recipe (Lightning)
    predictor = framer.load("runs/<run>/version_0")                 # a run, checkpoint or model folder: .predict(...)

Command-line faces: ``python -m framer.cli`` (train, test, predict), ``framer.predict``, ``framer.export``,
``framer.data``, ``framer.tune``, ``framer.reproduce``, ``framer.report``, ``framer.ensemble``, ``framer.matbench``;
``framer.testing`` holds test helpers for models (invariance checks). Names are imported on first use (PEP 562),
so ``import framer`` loads no torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_MODULES = {  # module -> the public names it defines
    "framer.models": "CrystalFramer",
    "framer.data.batch": "CrystalBatch collate_records collate_structures",
    "framer.data.structures": "CrystalRecord record_from_file record_from_structure",
    "framer.data.datamodules": "CrystalDataModule CustomDataModule EwaldDataModule JarvisDataModule MPDataModule",
    "framer.module": "CrystalRegressor",
    "framer.predictor": "Predictor load",
}
_EXPORTS = {name: module for module, names in _MODULES.items() for name in names.split()}

__all__ = [
    "CrystalBatch",
    "CrystalDataModule",
    "CrystalFramer",
    "CrystalRecord",
    "CrystalRegressor",
    "CustomDataModule",
    "EwaldDataModule",
    "JarvisDataModule",
    "MPDataModule",
    "Predictor",
    "__version__",
    "collate_records",
    "collate_structures",
    "load",
    "record_from_file",
    "record_from_structure",
]


def __getattr__(name: str):
    if name == "__version__":
        value = importlib.import_module("framer.provenance").framer_version()
    elif name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    else:
        raise AttributeError(f"module 'framer' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:
    from framer.data.batch import CrystalBatch, collate_records, collate_structures
    from framer.data.datamodules import (
        CrystalDataModule,
        CustomDataModule,
        EwaldDataModule,
        JarvisDataModule,
        MPDataModule,
    )
    from framer.data.structures import CrystalRecord, record_from_file, record_from_structure
    from framer.models import CrystalFramer
    from framer.module import CrystalRegressor
    from framer.predictor import Predictor, load

    __version__: str
