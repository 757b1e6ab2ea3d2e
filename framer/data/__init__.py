"""Data: crystal records, batching, paper data sets with their exact splits, caches and LightningDataModules.

Raw files live under ``$FRAMER_DATA_DIR`` (default ``./data``, layout in :mod:`framer.data.sources`; docs/data.md
describes them and the paper splits). ``python -m framer.data info`` shows what is present (offline); ``download``
fetches the raw files on a machine with internet. Names are imported lazily (PEP 562), so ``info`` does not pay for
torch and Lightning.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "CrystalBatch": "framer.data.batch",
    "collate_records": "framer.data.batch",
    "collate_structures": "framer.data.batch",
    "CrystalDataModule": "framer.data.datamodules",
    "CrystalDataset": "framer.data.datamodules",
    "CustomDataModule": "framer.data.datamodules",
    "EwaldDataModule": "framer.data.datamodules",
    "JarvisDataModule": "framer.data.datamodules",
    "MPDataModule": "framer.data.datamodules",
    "DataCorruptError": "framer.data.sources",
    "DataError": "framer.data.sources",
    "DataNotFoundError": "framer.data.sources",
    "data_root": "framer.data.sources",
    "paper_split": "framer.data.splits",
    "split_fingerprint": "framer.data.splits",
    "CrystalRecord": "framer.data.structures",
    "InvalidStructureError": "framer.data.structures",
    "record_from_file": "framer.data.structures",
    "record_from_jarvis_atoms": "framer.data.structures",
    "record_from_structure": "framer.data.structures",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'framer.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
