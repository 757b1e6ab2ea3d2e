"""Data: crystal records, batching, paper data sets with their exact splits, caches and LightningDataModules.

Raw files live under ``$FRAMER_DATA_DIR`` (default ``./data``) in the layout of :mod:`framer.data.sources`; what
they hold and how the paper splits are rebuilt is docs/data.md. ``python -m framer.data info`` shows what is
present, the counts and the split fingerprints (offline); ``python -m framer.data download`` fetches the raw files on
a machine with internet.

DataModules: :class:`MPDataModule`, :class:`JarvisDataModule`, :class:`CustomDataModule` (CIF/POSCAR folder +
``id_prop.csv``) and :class:`EwaldDataModule` (embedded synthetic set); the arguments they share are those of
:class:`CrystalDataModule`. Each exposes ``target_stats()``, ``split_fingerprints()``, ``split_ids()``,
``summary()``, ``dataset_name``, ``target`` and ``target_units``; batches are :class:`CrystalBatch`.

Names are imported lazily (PEP 562), so ``python -m framer.data info`` does not pay for torch and Lightning.
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

