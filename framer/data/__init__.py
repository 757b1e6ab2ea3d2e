"""Data: crystal records, batching, paper data sets with their exact splits, caches and LightningDataModules.

Raw files live under ``$FRAMER_DATA_DIR`` (default ``./data``, layout in :mod:`framer.data.sources`; docs/data.md
describes them and the paper splits). ``python -m framer.data info`` shows what is present (offline); ``download``
fetches the raw files on a machine with internet. Names are imported lazily (PEP 562), so ``info`` does not pay for
torch and Lightning.
"""

from __future__ import annotations

import importlib

_MODULES = {
    "framer.data.batch": "CrystalBatch collate_records collate_structures",
    "framer.data.datamodules": "CrystalDataModule CrystalDataset CustomDataModule EwaldDataModule JarvisDataModule "
    "MPDataModule",
    "framer.data.sources": "DataCorruptError DataError DataNotFoundError data_root",
    "framer.data.splits": "paper_split split_fingerprint",
    "framer.data.structures": "CrystalRecord InvalidStructureError record_from_file record_from_jarvis_atoms "
    "record_from_structure",
}
_EXPORTS = {name: module for module, names in _MODULES.items() for name in names.split()}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'framer.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
