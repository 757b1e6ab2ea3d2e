"""Gradients of the periodic attention: gradcheck in float64, finite gradients on symmetric cells."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from framer.models import CrystalFramer, PeriodicAttention
from framer.models.frames import lattice_frames
from framer.models.periodic import PeriodicGraph
from framer.testing import make_batch, random_crystal

from .conftest import frozen_model
from .structures import symmetric_crystals


def _tiny_layer(frame: str, recompute: bool | None = None) -> PeriodicAttention:
    torch.manual_seed(0)
    layer = PeriodicAttention(
        dim=8,
        num_heads=2,
        frame=frame,
        dist_basis=6,
        angle_basis=5,
        angle_width=1.0,
        angle_coef=2.0,
        dist_coef=1.5,
        recompute=recompute,
    ).double()
    with torch.no_grad():  # freeze the sigma statistics as after a first training batch
        layer.sigma_mean.fill_(0.1)
        layer.sigma_inv_std.fill_(2.0)
        layer.sigma_ready.fill_(1.0)
    return layer


@pytest.mark.parametrize(("frame", "recompute"), [("none", None), ("lattice", None), ("lattice", True), ("max", None)])
def test_attention_gradcheck(frame: str, recompute: bool | None) -> None:
    """Exact first derivatives w.r.t. atom features and the sigma/psi parameters (frames held fixed by design)."""
    batch = make_batch([random_crystal(3, seed=7)], dtype=torch.float64)
    # image_tolerance=0: no data-dependent pruning, so finite differences see a smooth function;
    # a small chunk_size exercises several chunks.
    graph = PeriodicGraph(batch.pos, batch.lattice, batch.sizes, batch.image_box, chunk_size=4096, image_tolerance=0)
    layer = _tiny_layer(frame, recompute)
    frames = None
    if frame == "lattice":
        frames = lattice_frames(batch.lattice, batch.image_box)[graph.src.new_zeros(3)].unsqueeze(1).expand(-1, 2, 3, 3)
    names = ["sigma_weight", "dist_proj"] + (["angle_proj"] if frame != "none" else [])
    params = [getattr(layer, n).detach().clone().requires_grad_() for n in names]
    x = torch.randn(3, 8, dtype=torch.float64, requires_grad=True)

    def fn(x, *values):
        return functional_call(layer, dict(zip(names, values)), (x, graph, frames))

    assert torch.autograd.gradcheck(fn, (x, *params), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_pruning_changes_little() -> None:
    """Skipping images below 1e-9 relative weight changes outputs and gradients by far less than 1e-6."""
    batch = make_batch([random_crystal(5, seed=s) for s in range(2)], dtype=torch.float64)
    results = []
    for tolerance in (1e-9, 0.0):
        model = frozen_model("crystalframer", image_tolerance=tolerance)
        out = model(batch)
        grad = torch.autograd.grad(out.sum(), model.blocks[0].attention.sigma_weight)[0]
        results.append((out.detach(), grad))
    assert torch.allclose(results[0][0], results[1][0], rtol=0, atol=1e-8)
    assert torch.allclose(results[0][1], results[1][1], rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("preset", sorted(CrystalFramer.PRESETS))
def test_symmetric_cells_are_finite(preset: str) -> None:
    """Rock salt, bcc, fcc and one-atom cells: finite outputs and gradients for every frame type."""
    model = CrystalFramer.preset(preset, num_layers=2).train()
    batch = make_batch(symmetric_crystals(), dtype=torch.float32)
    out = model(batch)
    assert out.shape == (len(batch.sizes),) and torch.isfinite(out).all()
    out.sum().backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_recompute_matches_stored() -> None:
    """Checkpointed image sums give the same gradients as stored ones."""
    batch = make_batch([random_crystal(4, seed=3)], dtype=torch.float64)
    grads = []
    for recompute in (False, True):
        model = frozen_model("crystalframer-lightweight", num_layers=2, recompute=recompute).train()
        model(batch).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert torch.allclose(grads[0], grads[1], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("frame", ["none", "max"])
def test_gradients_are_bitwise_repeatable_with_two_threads(frame: str) -> None:
    """Backward passes give identical bits run after run on 2 CPU threads (advanced-indexing backward did not)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.manual_seed(0)
        model = CrystalFramer(frame=frame, num_layers=1, model_dim=32, num_heads=4, ff_dim=32, angle_basis=8)
        sizes = (8, 16, 24, 32, 40)  # 3,520 edges: the per-edge gathers' backward runs multi-threaded
        batch = make_batch([random_crystal(n, seed=n) for n in sizes], dtype=torch.float32)
        grads = []
        for _ in range(6):
            model.zero_grad()
            model(batch).sum().backward()
            grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    finally:
        torch.set_num_threads(threads)
    for repeat in grads[1:]:
        assert all(torch.equal(a, b) for a, b in zip(grads[0], repeat))
