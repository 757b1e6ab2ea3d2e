"""Large cells and devices: a 500-atom cell forward and backward on CPU (slow), CUDA forward/backward (gpu)."""

from __future__ import annotations

import pytest
import torch

from framer.models import CrystalFramer
from framer.testing import make_batch, random_crystal, supercell


@pytest.mark.slow
def test_500_atom_cell_forward_backward() -> None:
    """Memory stays bounded: image sums are chunked and recomputed in the backward pass for large cells."""
    crystal = supercell(random_crystal(4, seed=3), (5, 5, 5))  # 500 atoms, 250,000 atom pairs
    model = CrystalFramer.preset("crystalframer").train()
    batch = make_batch([crystal], dtype=torch.float32)
    out = model(batch)
    out.sum().backward()
    assert out.shape == (1,) and torch.isfinite(out).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("preset", ["crystalformer", "crystalframer", "crystalframer-weighted_pca"])
def test_cuda_forward_backward(preset: str) -> None:
    """The same code on CUDA; it agrees with the CPU result."""
    model = CrystalFramer.preset(preset).double()
    batch = make_batch([random_crystal(n, seed=n) for n in (1, 3, 6)], dtype=torch.float64)
    model.train()
    cpu = model(batch)
    model.cuda()
    gpu = model(batch.to("cuda"))
    gpu.sum().backward()
    assert torch.allclose(cpu, gpu.cpu(), rtol=1e-6, atol=1e-8)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
