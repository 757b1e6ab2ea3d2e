"""Correctness (the device against the CPU) and mixed precision (against float32), on the reference batch.

Every preset is built once in float64 on the CPU with seed 0 and frozen sigma statistics, then copied to each
device and dtype, so all runs compute the same function. A run is a training-mode forward and the backward pass of
the outputs' sum; figures are relative differences max |x - x_ref| / max |x_ref| of the outputs and of each
parameter's gradient (the worst parameter is named).

- correctness on CUDA: CUDA float64 vs CPU float64 (expected <= 1e-10) and CUDA float32 vs CPU float32 (expected
  <= 1e-4, the tolerance of framer's own float32 tests); on the CPU (no second device): CPU float32 vs CPU float64,
  so the same code path runs. A comparison above its expectation is a failure of the part.
- mixed precision: autocast bfloat16 and float16 (what ``trainer.precision: bf16-mixed`` / ``16-mixed`` do) and,
  on CUDA, TF32 matmuls, each against float32 on the same device. Reported, not judged; a precision that does not
  run is a failure of the part, with the error.
"""

from __future__ import annotations

import torch

from bench.gpu_check import crystals
from bench.gpu_check.harness import PartContext, one_line
from bench.gpu_check.steps import PRESETS, build_model, compare, copy_to, outputs_and_gradients

EXPECTED = {"float64": 1e-10, "float32": 1e-4}


def _reference_batch(ctx: PartContext):
    batch = crystals.reference_batch(ctx.config.reference_crystals)
    ctx.figures["batch"] = {"crystals": len(batch), "atoms": batch.num_atoms, "atom_pairs": int((batch.sizes**2).sum())}
    return batch


def correctness(ctx: PartContext) -> None:
    """Outputs and parameter gradients of every preset on the device against the CPU (float64 and float32)."""
    batch = _reference_batch(ctx)
    device, cpu = ctx.device, torch.device("cpu")
    rows = ctx.figures.setdefault("presets", {})
    for preset in PRESETS:
        if ctx.left() <= 0:
            ctx.fail(preset, "not run: time budget spent")
            continue
        master = build_model(preset, batch, **ctx.config.model_overrides)
        row = rows.setdefault(preset, {})
        try:
            if device.type == "cuda":
                pairs = [("float64", torch.float64, torch.float64), ("float32", torch.float32, torch.float32)]
            else:  # one device: float32 against float64 exercises the same code
                pairs = [("float32", torch.float32, torch.float64)]
            for name, dtype, ref_dtype in pairs:
                ref = outputs_and_gradients(copy_to(master, cpu, ref_dtype), batch.to(dtype=ref_dtype))
                got = outputs_and_gradients(copy_to(master, device, dtype), batch.to(device=device, dtype=dtype))
                result = compare(*got, *ref)
                result["against"] = f"{device.type} {dtype} vs cpu {ref_dtype}".replace("torch.", "")
                result["expected_at_most"] = EXPECTED[name]
                result["within"] = max(result["outputs"], result["gradients"]) <= EXPECTED[name]
                row[name] = result
                if not result["within"]:
                    ctx.fail(
                        f"{preset} {name}",
                        f"relative difference {max(result['outputs'], result['gradients']):.2e} > {EXPECTED[name]:g}"
                        f" ({result['against']}; worst gradient {result['worst_parameter']})",
                    )
        except Exception as error:  # a preset that does not run on the device
            row["error"] = ctx.fail(preset, error)
        ctx.save()


def mixed_precision(ctx: PartContext) -> None:
    """bf16 and fp16 autocast, and TF32 on CUDA, against float32 on the same device (reported)."""
    batch = _reference_batch(ctx)
    device = ctx.device
    batch32 = batch.to(device=device, dtype=torch.float32)
    modes = ["bf16-autocast", "fp16-autocast", "tf32"]
    ctx.figures["modes"] = modes
    rows = ctx.figures.setdefault("presets", {})
    failed_modes: dict[str, str] = {}
    for preset in PRESETS:
        if ctx.left() <= 0:
            ctx.fail(preset, "not run: time budget spent")
            continue
        model = copy_to(build_model(preset, batch, **ctx.config.model_overrides), device, torch.float32)
        reference = outputs_and_gradients(model, batch32)
        row = rows.setdefault(preset, {})
        for mode in modes:
            if mode == "tf32" and device.type != "cuda":
                row[mode] = {"skipped": "TF32 is a CUDA matmul mode"}
                continue
            try:
                if mode == "tf32":
                    with tf32_enabled():
                        got = outputs_and_gradients(model, batch32)
                else:
                    dtype = torch.bfloat16 if mode.startswith("bf16") else torch.float16
                    got = outputs_and_gradients(model, batch32, autocast=dtype)
                row[mode] = compare(*got, *reference)
            except Exception as error:
                row[mode] = {"error": one_line(error)}
                failed_modes.setdefault(mode, f"{preset}: {one_line(error)}")
        ctx.save()
    for mode, reason in failed_modes.items():
        presets = [p for p, row in rows.items() if "error" in row.get(mode, {})]
        ctx.fail(f"{mode} ({len(presets)}/{len(rows)} presets)", reason)


class tf32_enabled:
    """TF32 for float32 matmuls (``set_float32_matmul_precision("high")``) and cuDNN inside the block."""

    def __enter__(self):
        self.saved = (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32)
        torch.set_float32_matmul_precision("high")
        torch.backends.cudnn.allow_tf32 = True

    def __exit__(self, *exc):
        torch.set_float32_matmul_precision(self.saved[0])
        torch.backends.cudnn.allow_tf32 = self.saved[1]
