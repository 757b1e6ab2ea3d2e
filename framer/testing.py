"""Test helpers shipped with the package: random low-symmetry crystals, symmetry transforms, invariance checks, and
a tiny stand-in network for fast pipeline tests.

Example:
    >>> model = CrystalFramer().double().eval()
    >>> crystal = random_crystal(num_atoms=4, seed=0)
    >>> assert_invariant(model, crystal, lambda c: rotate(c, random_rotation(1)))
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from framer.data.batch import CrystalBatch, collate_records
from framer.data.structures import CrystalRecord
from framer.geometry import image_box

FLOAT_TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-6}


def random_rotation(seed: int | np.random.Generator = 0) -> np.ndarray:
    """A uniformly random proper rotation matrix (3, 3)."""
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def random_crystal(
    num_atoms: int = 4,
    seed: int | np.random.Generator = 0,
    volume_per_atom: float = 15.0,
    min_distance: float = 1.5,
    elements: Sequence[int] = tuple(range(1, 99)),
) -> CrystalRecord:
    """A random triclinic crystal (no symmetry in general) with atoms at least ``min_distance`` Å apart."""
    rng = np.random.default_rng(seed)
    while True:
        lattice = np.eye(3) + 0.25 * rng.normal(size=(3, 3))
        if np.linalg.det(lattice) < 0.3:
            continue
        lattice *= (num_atoms * volume_per_atom / np.linalg.det(lattice)) ** (1 / 3)
        lattice = lattice @ random_rotation(rng).T
        frac = _place_atoms(lattice, num_atoms, min_distance, rng)
        if frac is not None:
            numbers = rng.choice(np.asarray(elements), size=num_atoms)
            return CrystalRecord(f"random-{num_atoms}", lattice, frac, numbers.astype(np.int64))


def _place_atoms(lattice: np.ndarray, num_atoms: int, min_distance: float, rng, tries: int = 200) -> np.ndarray | None:
    """Add random atoms one by one, each at least ``min_distance`` from the others; None if the cell fills up."""
    frac = np.empty((0, 3))
    while len(frac) < num_atoms:
        for _ in range(tries):
            candidate = np.vstack([frac, rng.random((1, 3))])
            if min_periodic_distance(lattice, candidate) >= min_distance:
                frac = candidate
                break
        else:
            return None
    return frac


def min_periodic_distance(lattice: np.ndarray, frac: np.ndarray) -> float:
    """Shortest distance between two atoms or an atom and its own image (Å)."""
    diff = frac[None, :, :] - frac[:, None, :]
    diff -= np.round(diff)
    shifts = np.array(list(itertools.product((-1, 0, 1), repeat=3)))
    vectors = (diff[:, :, None, :] + shifts) @ lattice  # (N, N, 27, 3)
    d = np.linalg.norm(vectors, axis=-1)
    d[d < 1e-8] = np.inf  # an atom and itself
    return float(d.min())


def _record(record: CrystalRecord, lattice: np.ndarray, frac: np.ndarray, numbers: np.ndarray) -> CrystalRecord:
    return CrystalRecord(record.id, lattice, frac, numbers, record.target)


def rotate(record: CrystalRecord, rotation: np.ndarray) -> CrystalRecord:
    """Rotate the lattice vectors (fractional coordinates unchanged)."""
    return _record(record, record.lattice @ np.asarray(rotation).T, record.frac_coords, record.atomic_numbers)


def translate(record: CrystalRecord, shift: Sequence[float], wrap: bool = True) -> CrystalRecord:
    """Shift the fractional coordinates by ``shift``, wrapped back into [0, 1) unless ``wrap=False``."""
    frac = record.frac_coords + np.asarray(shift)
    return _record(record, record.lattice, frac % 1.0 if wrap else frac, record.atomic_numbers)


def permute(record: CrystalRecord, order: Sequence[int]) -> CrystalRecord:
    """Reorder the atoms."""
    order = np.asarray(order)
    return _record(record, record.lattice, record.frac_coords[order], record.atomic_numbers[order])


def change_basis(record: CrystalRecord, unimodular: np.ndarray) -> CrystalRecord:
    """Same crystal, lattice vectors U L for an integer matrix U with det +-1; atoms wrapped into the new cell."""
    unimodular = np.asarray(unimodular, dtype=np.float64)
    if round(abs(np.linalg.det(unimodular))) != 1:
        raise ValueError("the basis change must be unimodular")
    frac = (record.frac_coords @ np.linalg.inv(unimodular)) % 1.0
    return _record(record, unimodular @ record.lattice, frac, record.atomic_numbers)


def supercell(record: CrystalRecord, repeats: Sequence[int] = (2, 1, 1)) -> CrystalRecord:
    """The crystal repeated ``repeats`` times along its lattice vectors."""
    repeats = np.asarray(repeats)
    shifts = np.array(list(itertools.product(*(range(r) for r in repeats))))
    frac = ((record.frac_coords[None, :, :] + shifts[:, None, :]) / repeats).reshape(-1, 3)
    numbers = np.tile(record.atomic_numbers, len(shifts))
    return _record(record, record.lattice * repeats[:, None], frac, numbers)


def make_batch(
    records: Sequence[CrystalRecord], dtype: torch.dtype = torch.float64, cutoff: float | None = None
) -> CrystalBatch:
    """Batch records with positions and lattices computed in float64, then cast to ``dtype``; with ``cutoff``, image
    boxes cover that radius (Å) instead of the default ``IMAGE_CUTOFF``."""
    batch = collate_records(records)
    pos = torch.from_numpy(np.concatenate([r.frac_coords @ r.lattice for r in records]))
    lattice = torch.from_numpy(np.stack([r.lattice for r in records]))
    boxes = batch.image_box
    if cutoff is not None:
        boxes = torch.from_numpy(np.stack([image_box(r.lattice, cutoff=cutoff) for r in records]))
    return replace(batch, pos=pos.to(dtype), lattice=lattice.to(dtype), image_box=boxes)


def predict(model: torch.nn.Module, records: Sequence[CrystalRecord], cutoff: float | None = None) -> torch.Tensor:
    """Model outputs (B,) in the model's dtype, without gradients."""
    param = next(model.parameters())
    with torch.no_grad():
        return model(make_batch(records, dtype=param.dtype, cutoff=cutoff).to(param.device))


def assert_invariant(
    model: torch.nn.Module,
    record: CrystalRecord,
    transform: Callable[[CrystalRecord], CrystalRecord],
    atol: float | None = None,
    cutoff: float | None = None,
) -> float:
    """Check model(transform(record)) == model(record) within ``atol`` (default 1e-6 in float64, 1e-4 in float32,
    relative to max(1, |output|)); returns the absolute difference."""
    dtype = next(model.parameters()).dtype
    atol = FLOAT_TOLERANCE[dtype] if atol is None else atol
    out = predict(model, [record, transform(record)], cutoff=cutoff)
    diff = float((out[0] - out[1]).abs())
    scale = max(1.0, float(out[0].abs()))
    assert diff <= atol * scale, f"not invariant: {float(out[0])!r} vs {float(out[1])!r} (|diff| {diff:.3g})"
    return diff


class PooledMLP(nn.Module):
    """A stand-in network for fast tests of training, checkpoints and resuming (not a crystal model).

    Mean-pooled element embeddings (width ``hidden``) and the volume per atom, then an MLP (with ``dropout`` after its
    first layer, so that resuming exactly needs the random state).
    """

    def __init__(self, hidden: int = 16, dropout: float = 0.0) -> None:
        super().__init__()
        self.hidden = hidden
        self.dropout = dropout
        self.embed = nn.Embedding(99, hidden)
        self.mlp = nn.Sequential(nn.Linear(hidden + 1, hidden), nn.SiLU(), nn.Dropout(dropout), nn.Linear(hidden, 1))

    def forward(self, batch: CrystalBatch) -> torch.Tensor:
        h = self.embed(batch.atomic_numbers)
        pooled = torch.zeros(len(batch), h.shape[1], dtype=h.dtype, device=h.device)
        pooled.index_add_(0, batch.batch, h)
        pooled = pooled / batch.sizes.unsqueeze(1).to(h.dtype)
        volume = torch.linalg.det(batch.lattice).abs() / batch.sizes.to(h.dtype)
        return self.mlp(torch.cat([pooled, (volume / 20.0).unsqueeze(1)], dim=1)).squeeze(1)
