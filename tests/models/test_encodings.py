"""Gaussian expansions: exact where it matters, and never subnormal (subnormal floats are 10-100x slower on CPUs)."""

from __future__ import annotations

import torch

from framer.models import encodings

TINY = torch.finfo(torch.float32).tiny  # smallest normal float32


def _smallest_nonzero(x: torch.Tensor) -> float:
    return float(x[x != 0].abs().min())


def test_exp_and_pairwise_products_stay_normal() -> None:
    values = encodings.exp_(torch.linspace(-2000.0, 0.0, 4001))
    assert _smallest_nonzero(values) >= TINY
    products = values.unsqueeze(0) * values.unsqueeze(1)  # a weight times a basis value, as in the image sums
    assert _smallest_nonzero(products) >= TINY


def test_basis_matches_gaussians_and_stays_normal() -> None:
    basis = encodings.distance_basis(64, 14.0)
    distances = torch.linspace(0.0, 40.0, 2001, dtype=torch.float64)
    exact = torch.exp(-((distances.unsqueeze(-1) - basis.centers()) ** 2) / (2 * basis.width**2))
    values = basis(distances.float())
    assert torch.allclose(values.double(), exact, rtol=1e-4, atol=1e-15)
    assert _smallest_nonzero(values) >= TINY
    assert _smallest_nonzero(values.unsqueeze(-1) * values.unsqueeze(-2)) >= TINY
