"""Mixed precision (issue 19 item 3): under ``torch.autocast`` (what Lightning's ``bf16-mixed`` / ``16-mixed`` turn on
on a GPU; here CPU autocast) every preset runs and trains, only the dense per-atom layers run in low precision
(:mod:`framer.models.precision`), and outputs, gradients and a short fit stay close to float32.

Tolerances (relative to float32; outputs max |y - y32| / max |y32|, gradients ||g - g32|| / ||g32|| over all
parameters), on crystals where float32 agrees with float64 to 1e-5: bfloat16 outputs 1e-2 and gradients 2e-2,
float16 outputs 2e-3 and gradients 5e-3. Where frames are nearly degenerate a frame can switch axes under any
change of precision (float32 vs float64 included) and move outputs by more (docs/model.md, "Mixed precision").
"""

from __future__ import annotations

import functools
import warnings

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.plugins.precision import MixedPrecision
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.data import DataLoader

from framer.data.batch import collate_records
from framer.models import CrystalFramer
from framer.module import CrystalRegressor
from framer.testing import make_batch, random_crystal

from .conftest import frozen_model

SMALL = {"num_layers": 2, "model_dim": 32, "num_heads": 4, "ff_dim": 64, "head_dim": 32}
LOW = {"bf16": torch.bfloat16, "fp16": torch.float16}
TOLERANCE = {"bf16": (1e-2, 2e-2), "fp16": (2e-3, 5e-3)}  # outputs, gradients
# the only operators that may see a bfloat16/float16 tensor: the linear layers (and their backward), ReLU, casts,
# and the residual sums that promote back to float32
LOW_PRECISION_OPS = {"addmm", "mm", "t", "view", "_to_copy", "add", "relu", "threshold_backward", "sum", "detach"}


def _batch():
    return make_batch([random_crystal(n, seed=n) for n in (1, 2, 3, 5)], dtype=torch.float32)


def _outputs_and_gradients(model, batch, dtype=None):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        outputs = model(batch)
    outputs.sum().backward()
    return outputs.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


class _LowPrecisionOps(TorchDispatchMode):
    """Names of the operators that read or write a bfloat16 or float16 tensor."""

    def __init__(self):
        super().__init__()
        self.names = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        tensors = torch.utils._pytree.tree_leaves((args, kwargs, out))
        if any(isinstance(t, torch.Tensor) and t.dtype in LOW.values() for t in tensors):
            self.names.add(func.overloadpacket.__name__)
        return out


@pytest.mark.parametrize("precision", sorted(LOW))
@pytest.mark.parametrize("preset", sorted(CrystalFramer.PRESETS))
def test_autocast_stays_close_to_float32(preset: str, precision: str) -> None:
    model = frozen_model(preset, torch.float32, **SMALL)
    batch = _batch()
    reference, reference_gradients = _outputs_and_gradients(model, batch)
    with _LowPrecisionOps() as seen:
        outputs, gradients = _outputs_and_gradients(model, batch, LOW[precision])

    assert outputs.dtype == torch.float32 and all(g.dtype == torch.float32 for g in gradients.values())
    assert gradients.keys() == reference_gradients.keys()
    assert seen.names and seen.names <= LOW_PRECISION_OPS, sorted(seen.names - LOW_PRECISION_OPS)
    output_error = float((outputs - reference).abs().max() / reference.abs().max())
    flat = torch.cat([g.flatten() for g in gradients.values()])
    flat_reference = torch.cat([reference_gradients[name].flatten() for name in gradients])
    gradient_error = float((flat - flat_reference).norm() / flat_reference.norm())
    assert 0 < output_error <= TOLERANCE[precision][0], output_error  # > 0: the projections did run in low precision
    assert gradient_error <= TOLERANCE[precision][1], gradient_error


def test_autocast_leaves_a_float64_model_untouched() -> None:
    """Autocast does not touch a float64 model (its outputs are bitwise those without autocast)."""
    model = frozen_model("crystalframer", torch.float64, **SMALL)
    batch = _batch().to(dtype=torch.float64)
    with torch.no_grad():
        plain = model(batch)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            cast = model(batch)
    assert cast.dtype == torch.float64 and torch.equal(plain, cast)


# --- a short fit ------------------------------------------------------------------------------------------------------
# Full-batch steps on 16 crystals of 1-4 atoms with AdamW (lr 1e-3): the loss falls smoothly, so runs of different
# precisions can be compared step by step.
STEPS = 20


def _records(count: int = 16):
    """Random crystals whose target is a smooth function of composition and volume."""
    records = []
    for i in range(count):
        record = random_crystal(1 + i % 4, seed=1000 + i)
        volume = abs(np.linalg.det(record.lattice)) / record.num_atoms
        records.append(record.with_target(float(record.atomic_numbers.mean() / 10.0 + volume / 50.0)))
    return records


class _Losses(pl.Callback):
    def __init__(self):
        self.values = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.values.append(float(outputs["loss"]))


def _lightning_fit(precision: str) -> list[float]:
    """Training losses of a small CrystalFramer through Lightning (seed 0, same data). ``"16-mixed"`` is passed as
    Lightning's MixedPrecision plugin with float16 and a gradient scaler: given as a string on a CPU, Lightning
    would run bfloat16 instead."""
    pl.seed_everything(0, verbose=False)
    records = _records()
    targets = np.array([r.target for r in records])
    module = CrystalRegressor(
        CrystalFramer.preset("crystalframer", **SMALL),
        optimizer=functools.partial(torch.optim.AdamW, lr=1e-3, betas=(0.9, 0.98)),
        swa_epochs=0,
        target_mean=targets.mean(),
        target_std=targets.std(),
    )
    loader = DataLoader(records, batch_size=len(records), collate_fn=collate_records)
    losses = _Losses()
    if precision == "16-mixed":
        settings = {"plugins": [MixedPrecision("16-mixed", "cpu", torch.amp.GradScaler("cpu"))]}
    else:
        settings = {"precision": precision}
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_steps=STEPS, logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, gradient_clip_val=1.0, callbacks=[losses], **settings,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one batch per epoch, no validation loader, SWA from the start
        trainer.fit(module, loader)
    return losses.values


@pytest.fixture(scope="module")
def float32_losses() -> list[float]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the function-scoped fixture of conftest.py does
    try:
        return _lightning_fit("32-true")
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_a_short_fit_follows_float32(precision: str, float32_losses: list[float]) -> None:
    """Through Lightning, ``bf16-mixed`` and ``16-mixed`` (float16 with loss scaling) train: the loss falls as in
    float32."""
    full, mixed = float32_losses, _lightning_fit(precision)
    assert len(full) == len(mixed) == STEPS
    assert full[-1] < 0.8 * full[0]  # the run learns
    assert abs(mixed[0] - full[0]) <= 1e-2 * full[0]  # same weights and data: the same first loss, to precision
    assert abs(mixed[-1] - full[-1]) <= 0.05 * full[-1], (mixed, full)
