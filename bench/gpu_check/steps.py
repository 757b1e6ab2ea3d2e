"""Model steps shared by the parts: seeded presets with frozen sigma statistics, a training step, comparisons."""

from __future__ import annotations

import copy
import gc
import time
from collections.abc import Callable
from typing import Any

import torch

from framer.data.batch import CrystalBatch
from framer.models import CrystalFramer

PRESETS = tuple(CrystalFramer.PRESETS)
SPEED_PRESETS = ("crystalformer", "crystalframer", "crystalframer-lightweight")  # the paper's efficiency table
SEED = 0


def build_model(preset: str, stats_batch: CrystalBatch, **overrides: Any) -> CrystalFramer:
    """A float64 CPU model of ``preset`` (seed 0) whose sigma statistics are frozen on ``stats_batch``.

    Freezing them (one training-mode forward without gradients, as the first training batch does) makes every
    later copy on another device or dtype standardise with the same numbers.
    """
    torch.manual_seed(SEED)
    model = CrystalFramer.preset(preset, **overrides).double().train()
    with torch.no_grad():
        model(stats_batch.to(dtype=torch.float64))
    return model


def copy_to(model: CrystalFramer, device: torch.device, dtype: torch.dtype) -> CrystalFramer:
    return copy.deepcopy(model).to(device=device, dtype=dtype)


def outputs_and_gradients(
    model: CrystalFramer, batch: CrystalBatch, autocast: torch.dtype | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Outputs (float64, CPU) of a training-mode forward and the gradients of their sum, per parameter."""
    model.zero_grad(set_to_none=True)
    device = next(model.parameters()).device
    if autocast is None:
        outputs = model(batch)
    else:
        with torch.autocast(device.type, dtype=autocast):
            outputs = model(batch)
    outputs.float().sum().backward()
    gradients = {name: p.grad.detach().double().cpu() for name, p in model.named_parameters() if p.grad is not None}
    return outputs.detach().double().cpu(), gradients


def relative_difference(value: torch.Tensor, reference: torch.Tensor) -> float:
    """max |value - reference| / max |reference| (0 when both are zero; inf when shapes differ or NaN appear)."""
    if value.shape != reference.shape:
        return float("inf")
    scale = reference.abs().max().item() if reference.numel() else 0.0
    error = (value - reference).abs().max().item() if reference.numel() else 0.0
    if error != error:  # NaN
        return float("inf")
    return error / scale if scale > 0 else error


def compare(
    outputs: torch.Tensor, gradients: dict[str, torch.Tensor], ref_outputs: torch.Tensor, ref_gradients: dict
) -> dict[str, Any]:
    """Relative differences of outputs and of every parameter gradient; the worst gradient and its parameter."""
    per_parameter = {
        name: relative_difference(gradients.get(name, torch.zeros(0)), g) for name, g in ref_gradients.items()
    }
    worst = max(per_parameter, key=per_parameter.get) if per_parameter else None
    return {
        "outputs": relative_difference(outputs, ref_outputs),
        "gradients": per_parameter[worst] if worst else 0.0,
        "worst_parameter": worst,
    }


def training_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: CrystalBatch, target) -> None:
    """Forward, L1 loss against ``target``, backward and an optimizer step (the benchmark's step)."""
    optimizer.zero_grad(set_to_none=True)
    loss = torch.nn.functional.l1_loss(model(batch), target)
    loss.backward()
    optimizer.step()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(call: Callable[[], Any], device: torch.device) -> float:
    """Wall seconds of one call, with the device synchronised before and after."""
    synchronize(device)
    start = time.perf_counter()
    call()
    synchronize(device)
    return time.perf_counter() - start


def is_out_of_memory(error: BaseException) -> bool:
    """A CUDA out-of-memory error, or the CPU allocator's failure."""
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(error, RuntimeError) and "can't allocate memory" in str(error)


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
