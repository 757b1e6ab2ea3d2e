"""Data: crystal records, batching, dataset loaders, exact paper splits, caches and LightningDataModules."""

from framer.data.batch import CrystalBatch, collate_records, collate_structures
from framer.data.structures import (
    CrystalRecord,
    InvalidStructureError,
    record_from_file,
    record_from_jarvis_atoms,
    record_from_structure,
)

__all__ = [
    "CrystalBatch",
    "CrystalRecord",
    "InvalidStructureError",
    "collate_records",
    "collate_structures",
    "record_from_file",
    "record_from_jarvis_atoms",
    "record_from_structure",
]
