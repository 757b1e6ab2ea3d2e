"""Flat (padding-free) batches of crystals: the only input type the models accept."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import numpy as np
import torch

from framer.data.structures import CrystalRecord, record_from_structure


@dataclass
class CrystalBatch:
    """Atoms of B crystals concatenated along one axis.

    Attributes:
        pos: (N, 3) Cartesian positions, Å.
        atomic_numbers: (N,) long, 1..98.
        lattice: (B, 3, 3) lattice vectors as rows, Å.
        batch: (N,) long, the crystal each atom belongs to (sorted, 0..B-1).
        sizes: (B,) long, atoms per crystal.
        image_box: (B, 3) long, half-ranges R_m of each crystal's periodic image box.
        y: (B,) target values in physical units (NaN when unknown).
        ids: B crystal identifiers.
    """

    pos: torch.Tensor
    atomic_numbers: torch.Tensor
    lattice: torch.Tensor
    batch: torch.Tensor
    sizes: torch.Tensor
    image_box: torch.Tensor
    y: torch.Tensor
    ids: list[str]

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def num_atoms(self) -> int:
        return int(self.pos.shape[0])

    def to(self, device=None, dtype: torch.dtype | None = None, non_blocking: bool = False) -> CrystalBatch:
        """Move every tensor to ``device``; floating tensors are also cast to ``dtype`` when given."""
        moved = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                cast = dtype if (dtype is not None and value.is_floating_point()) else None
                value = value.to(device=device, dtype=cast, non_blocking=non_blocking)
            moved[f.name] = value
        return replace(self, **moved)

    def pin_memory(self) -> CrystalBatch:
        return replace(self, **{f.name: getattr(self, f.name).pin_memory() for f in fields(self) if f.name != "ids"})


def collate_records(records: Sequence[CrystalRecord]) -> CrystalBatch:
    """Concatenate records into one batch (float32 positions and lattices, computed in float64 first)."""
    if len(records) == 0:
        raise ValueError("cannot collate an empty list of crystals")
    sizes = np.array([r.num_atoms for r in records], dtype=np.int64)
    pos = np.concatenate([r.cart_coords for r in records])
    return CrystalBatch(
        pos=torch.from_numpy(pos).float(),
        atomic_numbers=torch.from_numpy(np.concatenate([r.atomic_numbers for r in records])),
        lattice=torch.from_numpy(np.stack([r.lattice for r in records])).float(),
        batch=torch.repeat_interleave(torch.arange(len(records)), torch.from_numpy(sizes)),
        sizes=torch.from_numpy(sizes),
        image_box=torch.from_numpy(np.stack([r.image_box for r in records])),
        y=torch.tensor([r.target for r in records], dtype=torch.float32),
        ids=[r.id for r in records],
    )


def collate_structures(
    structures: Sequence, targets: Sequence[float] | None = None, ids: Sequence[str] | None = None
) -> CrystalBatch:
    """Batch a list of pymatgen Structures for ``model(batch)``.

    Example:
        >>> batch = collate_structures([Structure.from_file("POSCAR")])
        >>> model(batch).shape  # (1,)
    """
    targets = list(targets) if targets is not None else [math.nan] * len(structures)
    ids = list(ids) if ids is not None else [str(i) for i in range(len(structures))]
    records = [record_from_structure(s, i, t) for s, i, t in zip(structures, ids, targets, strict=True)]
    return collate_records(records)
