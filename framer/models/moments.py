"""Weighted moments sum_r w r (x) r (x) ... of image vectors, stored once per monomial x^a y^b z^c, and the
principal (PCA) frames built from them.

Frames read moments along candidate axes: the principal axes of PCA frames and their signs, and the keys that
decide ties between candidate axes of max frames (:mod:`framer.models.max_frames`). Moments are
rotation-equivariant and do not depend on the cell or on the order of the atoms, so every decision taken from them
is invariant too.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import torch
from torch import Tensor

from framer.models.encodings import exp_
from framer.models.periodic import ImageChunk, PeriodicGraph
from framer.models.ties import spectral_tolerance, tie_tolerance


class Monomials:
    """The monomials of chosen ``degrees`` of 3-vectors (e.g. (2, 3, 4): 6 + 10 + 15 = 31 monomials), and the full
    moment tensors built from their sums."""

    def __init__(self, degrees: tuple[int, ...]):
        self.degrees = degrees
        self.combos = [c for k in degrees for c in itertools.combinations_with_replacement(range(3), k)]
        self.size = len(self.combos)
        position = {c: i for i, c in enumerate(self.combos)}
        self._full_index = {
            k: torch.tensor([position[tuple(sorted(m))] for m in itertools.product(range(3), repeat=k)])
            for k in degrees
        }

    def __call__(self, vectors: Tensor) -> Tensor:
        """(..., 3) -> (..., size): every monomial of each vector."""
        values: dict[tuple[int, ...], Tensor] = {(axis,): vectors[..., axis] for axis in range(3)}
        for combo in sorted(self.combos, key=len):  # a monomial is its prefix times its last coordinate
            if combo not in values:
                values[combo] = values[combo[:-1]] * values[(combo[-1],)]
        return torch.stack([values[combo] for combo in self.combos], dim=-1)

    def full(self, sums: Tensor, degree: int) -> Tensor:
        """(..., size) summed monomials -> (..., 3, ..., 3) the full moment tensor of ``degree``."""
        index = self._full_index[degree].to(sums.device)
        return sums[..., index].unflatten(-1, (3,) * degree)

    def along(self, sums: Tensor, degree: int, axes: Tensor) -> Tensor:
        """The moment tensor of ``degree`` in the basis of ``axes`` (..., A, 3) (rows): (..., A, ..., A)."""
        tensor = self.full(sums, degree)
        letters = "abcd"[:degree]
        operands = ",".join(f"...{letter}{index}" for letter, index in zip(letters, "ijkl"))
        return torch.einsum(f"...{'ijkl'[:degree]},{operands}->...{letters}", tensor, *([axes] * degree))


@torch.no_grad()
def attention_moments(
    graph: PeriodicGraph, chunks: Iterable[ImageChunk], monomials: Monomials, a: Tensor, z: Tensor, alpha: Tensor
) -> Tensor:
    """(N, H, monomials.size): the ``monomials`` of each atom's images in ``chunks`` summed with the weights
    alpha_ij p_ijn, where p_ijn = exp(a_ih d²_ijn - z_ijh); a (N, H), z and alpha (E, H) (docs/model.md symbols)."""
    src = graph.src
    total = a.new_zeros(graph.num_atoms, a.shape[1], monomials.size)
    for chunk in chunks:
        edges = chunk.edges
        logp = a[src[edges]].unsqueeze(-1) * chunk.dist2.unsqueeze(1) - z[edges].unsqueeze(-1)
        weight = exp_(logp).mul_(alpha[edges].unsqueeze(-1)).masked_fill_(~chunk.valid.unsqueeze(1), 0.0)
        total.index_add_(0, src[edges], torch.bmm(weight, monomials(chunk.vectors)))
    return total


PCA = Monomials((2, 3, 4))  # second moments for the axes, third and fourth moments for their signs
_PAIRS = torch.tensor([[1, 1], [-1, 1], [1, -1], [-1, -1]])  # candidate signs (s1, s2) of f1, f2; f3 = f1 x f2


def _sign_quantities() -> tuple[list[tuple[int, ...]], Tensor]:
    """Moments along the frame axes that change sign with (s1, s2), in the order they decide, and their signs.

    A moment sum_r w (r.f_a)(r.f_b)... with axis counts (c1, c2, c3) gets the factor s1^(c1 + c3) s2^(c2 + c3)
    (f3 = f1 x f2 carries s1 s2). Order: the third moments along f1 and f2 (the rule used while they do not vanish),
    along f3, the mixed third moments, then the fourth moments (which decide in centrosymmetric environments,
    where every third moment vanishes).
    """
    pure = [(0, 0, 0), (1, 1, 1), (2, 2, 2)]
    others = [c for k in (3, 4) for c in itertools.combinations_with_replacement(range(3), k) if c not in pure]
    chosen, characters = [], []
    for combo in pure + others:
        counts = [combo.count(axis) for axis in range(3)]
        character = _PAIRS[:, 0] ** (counts[0] + counts[2]) * _PAIRS[:, 1] ** (counts[1] + counts[2])
        if (character != 1).any():
            chosen.append(combo)
            characters.append(character)
    return chosen, torch.stack(characters)


_SIGN_COMBOS, _SIGN_CHARACTERS = _sign_quantities()


def principal_frames(sums: Tensor) -> tuple[Tensor, Tensor]:
    """Frames from summed ``PCA`` monomials (..., 31), and where they are undefined.

    f1, f2 are the eigenvectors (columns) of the second moment with the largest eigenvalues; f3 = f1 x f2. Signs:
    the moments along the axes listed by ``_sign_quantities`` are read in order, and each one that does not vanish
    (above the tie tolerance of its Cauchy-Schwarz bound) fixes the signs it depends on; signs that no moment
    fixes are left as ``eigh`` returns them (a 2-fold axis of the environment then makes the choices equivalent).

    Returns:
        frames (..., 3, 3) and ``degenerate`` (...): True where two eigenvalues differ by less than the spectral
        tolerance of their sum; the axes are not determined there and callers substitute a fallback frame.
    """
    values, vectors = torch.linalg.eigh(PCA.full(sums, 2))  # ascending
    gap = torch.minimum(values[..., 2] - values[..., 1], values[..., 1] - values[..., 0])
    degenerate = gap <= spectral_tolerance(sums.dtype) * values.sum(-1).clamp_min(0.0)
    e1, e2 = vectors[..., 2], vectors[..., 1]
    signs = _moment_signs(sums, torch.stack([e1, e2, torch.linalg.cross(e1, e2)], dim=-2))
    e1, e2 = e1 * signs[..., :1], e2 * signs[..., 1:]
    return torch.stack([e1, e2, torch.linalg.cross(e1, e2)], dim=-2), degenerate


def _moment_signs(sums: Tensor, axes: Tensor) -> Tensor:
    """(..., 2) signs (s1, s2) for f1, f2 from the third and fourth moments along ``axes`` (..., 3, 3)."""
    tolerance = tie_tolerance(sums.dtype)
    along = {3: PCA.along(sums, 3, axes), 4: PCA.along(sums, 4, axes)}
    m2 = PCA.full(sums, 2).diagonal(dim1=-2, dim2=-1).sum(-1)  # sum w |r|^2
    m4 = torch.einsum("...iijj->...", PCA.full(sums, 4))  # sum w |r|^4
    bound = {3: (m2 * m4).clamp_min(0.0).sqrt(), 4: m4}  # |third| <= sqrt(m2 m4), |fourth| <= m4
    characters = _SIGN_CHARACTERS.to(sums.device, sums.dtype)
    allowed = torch.ones((*sums.shape[:-1], len(_PAIRS)), dtype=torch.bool, device=sums.device)
    for combo, character in zip(_SIGN_COMBOS, characters):
        value = along[len(combo)][(..., *combo)]
        decisive = value.abs() > tolerance * bound[len(combo)]
        narrowed = allowed & ((character * value.unsqueeze(-1) > 0) | ~decisive.unsqueeze(-1))
        allowed = torch.where(narrowed.any(-1, keepdim=True), narrowed, allowed)  # ignore already decided signs
    choice = allowed.int().argmax(-1)  # the first allowed pair; (+1, +1) keeps eigh's signs
    return _PAIRS.to(sums.device, sums.dtype)[choice]
