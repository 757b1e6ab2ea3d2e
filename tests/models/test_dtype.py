"""A float64 model is a float64 model however it was made, and the model takes batches of any float dtype.

- Every constant (Gaussian centres, the tabulated angle basis) follows the module's dtype: a model built in float32
  and moved with ``.double()`` computes what the same weights built under float64 defaults compute, to rounding.
- ``model(batch)`` casts the batch's floating tensors to the model's dtype (and moves it to the model's device);
  ``CrystalBatch.to`` takes the positional forms of ``Tensor.to``.
"""

from __future__ import annotations

import pytest
import torch

from framer.models import CrystalFramer
from framer.testing import make_batch, random_crystal

from .structures import bcc_iron, pymatgen_crystals

SMALL = {"num_layers": 2, "model_dim": 16, "num_heads": 2, "ff_dim": 32, "head_dim": 16}  # the preset's frames


def _records():
    return [random_crystal(n, seed=60 + n) for n in (1, 3, 5)] + [bcc_iron(), *pymatgen_crystals(["SrTiO3"])]


@pytest.mark.parametrize("preset", sorted(CrystalFramer.PRESETS))
def test_double_equals_a_float64_build(preset: str) -> None:
    """Built in float32 then ``.double()`` == built under float64 defaults with the same weights (to 1e-14)."""
    moved = CrystalFramer.preset(preset, **SMALL).double().eval()
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        native = CrystalFramer.preset(preset, **SMALL).eval()
    finally:
        torch.set_default_dtype(default)
    native.load_state_dict(moved.state_dict())
    batch = make_batch(_records(), dtype=torch.float64)
    with torch.no_grad():
        expected, actual = native(batch), moved(batch)
    assert (actual - expected).abs().max() <= 1e-14 * expected.abs().max()


def test_float32_model_keeps_float32_constants() -> None:
    """The float32 path evaluates its Gaussians with float32 centres, exactly as before the constants followed
    the dtype (default float32 outputs unchanged)."""
    model = CrystalFramer.preset("crystalframer", num_layers=1)
    attention = model.blocks[0].attention
    basis = attention.dist_basis
    assert basis.centers(torch.float32).dtype == torch.float32
    assert torch.equal(basis.centers(torch.float32), torch.linspace(14.0 / 64, 14.0, 64))
    assert attention.grid_basis(torch.float32, torch.device("cpu")).dtype == torch.float32
    assert attention.grid_basis(torch.float64, torch.device("cpu")).dtype == torch.float64


def test_model_casts_the_batch() -> None:
    """A float64 model takes a float32 batch (and the other way round), as if the batch had been cast first."""
    records = [random_crystal(3, seed=1), random_crystal(4, seed=2)]
    batch32 = make_batch(records, dtype=torch.float32)
    for dtype in (torch.float64, torch.float32):
        torch.manual_seed(0)
        model = CrystalFramer.preset("crystalframer-lightweight", **SMALL).to(dtype).eval()
        with torch.no_grad():
            out = model(batch32 if dtype == torch.float64 else batch32.to(torch.float64))
            assert out.dtype == dtype
            reference = model(batch32.to(dtype))
        assert torch.equal(out, reference)


def test_batch_to_takes_tensor_to_forms() -> None:
    batch = make_batch([random_crystal(2, seed=3)], dtype=torch.float32)
    as64 = [
        batch.to(torch.float64),
        batch.to("cpu", torch.float64),
        batch.to(torch.device("cpu"), dtype=torch.float64),
        batch.to(dtype=torch.float64),
        batch.to(torch.zeros(1, dtype=torch.float64)),
    ]
    for moved in as64:
        assert moved.pos.dtype == moved.lattice.dtype == moved.y.dtype == torch.float64
        assert moved.atomic_numbers.dtype == moved.sizes.dtype == moved.image_box.dtype == torch.int64
        assert torch.equal(moved.pos, batch.pos.double())
    for same in (batch.to("cpu"), batch.to(torch.zeros(1, dtype=torch.long)), batch.to("cpu", non_blocking=True)):
        assert same.pos.dtype == torch.float32 and same.ids == batch.ids
    with pytest.raises(TypeError, match="floating"):
        batch.to(torch.int32)
    with pytest.raises(TypeError, match="unexpected"):
        batch.to("cpu", torch.float64, "extra")
    with pytest.raises(TypeError, match="unexpected keyword"):
        batch.to(copy=True)
