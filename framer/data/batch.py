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

    def to(self, *args, **kwargs) -> CrystalBatch:
        """Move every tensor to a device and cast the floating ones, with the arguments ``Tensor.to`` takes.

        ``batch.to("cuda")``, ``batch.to(torch.float64)``, ``batch.to("cpu", torch.float64)``,
        ``batch.to(other_tensor)`` (its device and, if floating, its dtype), the keywords ``device``, ``dtype`` and
        ``non_blocking``. Integer tensors (atomic numbers, sizes, image boxes) only change device.
        """
        device, dtype, non_blocking = _to_arguments(args, kwargs)
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


def _to_arguments(args: tuple, kwargs: dict) -> tuple[torch.device | None, torch.dtype | None, bool]:
    """(device, dtype, non_blocking) from the positional and keyword forms of ``Tensor.to``."""
    unknown = set(kwargs) - {"device", "dtype", "non_blocking"}
    if unknown:
        raise TypeError(f"CrystalBatch.to() got unexpected keyword arguments {sorted(unknown)}")
    device, dtype = kwargs.get("device"), kwargs.get("dtype")
    rest = list(args)
    if rest and isinstance(rest[0], torch.Tensor):
        other = rest.pop(0)
        device, dtype = other.device, (other.dtype if other.is_floating_point() else None)
    else:
        if rest and not isinstance(rest[0], (torch.dtype, bool)):
            device = torch.device(rest.pop(0))
        if rest and isinstance(rest[0], torch.dtype):
            dtype = rest.pop(0)
    non_blocking = bool(rest.pop(0)) if rest and isinstance(rest[0], bool) else kwargs.get("non_blocking", False)
    if rest:
        raise TypeError(f"CrystalBatch.to() got unexpected positional arguments {rest!r}")
    if dtype is not None and not dtype.is_floating_point:
        raise TypeError(f"CrystalBatch.to() casts floating tensors only, not to {dtype}")
    return device, dtype, non_blocking


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
