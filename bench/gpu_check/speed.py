"""Speed, memory, host-device synchronisations and ``torch.compile`` of the models on the device (float32).

- speed: training crystals/s of Crystalformer, CrystalFramer and the lightweight CrystalFramer at the configured
  batch size (128) on MEGNet-MP-like and JARVIS-like synthetic crystals (:mod:`bench.gpu_check.crystals`), several
  distinct batches each (the first untimed); from them the projected seconds per epoch of each training split, and
  inference ms per material at batch 1 (eval, no_grad), as in the paper's efficiency table.
- memory: peak CUDA memory (``max_memory_allocated``) of one training step per preset after a warm-up step (so
  AdamW's state is included), and the largest cell (atoms, fixed density) that trains at batch 1: doubling,
  then bisection, until out of memory, the size cap or the time budget. On the CPU the same steps run but there is
  no allocator peak to read.
- syncs: CUDA's sync debug mode (``torch.cuda.set_sync_debug_mode("warn")``) during training steps; each warning
  is attributed to the innermost frame of this checkout's code on the Python stack.
- compile: ``torch.compile`` of Crystalformer and CrystalFramer: first call (compilation) and steady-state
  training-step times against eager, on one fixed batch. QUICK on the CPU uses the ``eager`` backend (Dynamo's
  tracing, graph breaks and guards without code generation, seconds instead of a minute).

A training step is forward, L1 loss against the (synthetic) targets, backward and AdamW (lr 1e-4).
"""

from __future__ import annotations

import functools
import statistics
import traceback
import warnings
from pathlib import Path

import torch

from bench.gpu_check import crystals
from bench.gpu_check.harness import REPO, PartContext, Skipped, one_line
from bench.gpu_check.steps import (
    PRESETS,
    SPEED_PRESETS,
    build_model,
    copy_to,
    free_memory,
    is_out_of_memory,
    synchronize,
    timed,
    training_step,
)
from framer.data.batch import collate_records

MIB = 2**20


def _trainer(preset: str, ctx: PartContext):
    """A float32 model on the device (sigma statistics frozen on the first reference crystal) and its AdamW."""
    model = build_model(preset, crystals.reference_batch(1), **ctx.config.model_overrides)
    model = copy_to(model, ctx.device, torch.float32)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-4)


def _batches(kind: str, count: int, batch_size: int, device: torch.device, seed: int = 0):
    """``count`` distinct batches of the data set stand-in ``kind`` (records of one synthetic epoch, in order)."""
    records = crystals.like_records(kind, count * batch_size, seed)
    return [
        collate_records(records[i * batch_size : (i + 1) * batch_size]).to(device=device, dtype=torch.float32)
        for i in range(count)
    ]


def speed(ctx: PartContext) -> None:
    """Training crystals/s at the batch size, projected s/epoch, inference ms/material at batch 1."""
    device, config = ctx.device, ctx.config
    for kind in ("jarvis", "mp"):  # JARVIS first: the paper's efficiency table is on JARVIS formation energy
        distribution = crystals.SIZE_DISTRIBUTIONS[kind]
        batches = _batches(kind, config.speed_batches, config.batch_size, device)
        table = ctx.figures.setdefault(kind, {"distribution": distribution.name, "train_size": distribution.train_size})
        table["atoms_per_batch"] = [b.num_atoms for b in batches]
        for preset in SPEED_PRESETS:
            if ctx.left() <= 0:
                table[preset] = {"error": "not run: time budget spent"}
                ctx.fail(f"{kind} {preset}", "not run: time budget spent")
                continue
            try:
                table[preset] = _train_speed(ctx, preset, batches, distribution.train_size)
            except Exception as error:
                table[preset] = {"error": ctx.fail(f"{kind} {preset}", error)}
            ctx.save()
    singles = crystals.like_records("jarvis", config.infer_crystals, seed=1)
    inference = ctx.figures.setdefault("inference_batch1", {"crystals": len(singles), "distribution": "jarvis"})
    for preset in SPEED_PRESETS:
        if ctx.left() <= 0:
            ctx.fail(f"inference {preset}", "not run: time budget spent")
            continue
        try:
            inference[preset] = _inference_ms(ctx, preset, singles)
        except Exception as error:
            inference[preset] = {"error": ctx.fail(f"inference {preset}", error)}
        ctx.save()


def _train_speed(ctx: PartContext, preset: str, batches: list, train_size: int) -> dict:
    device = ctx.device
    model, optimizer = _trainer(preset, ctx)
    steps = []
    for index, batch in enumerate(batches):
        target = torch.zeros(len(batch), device=device)
        seconds = timed(lambda b=batch, t=target: training_step(model, optimizer, b, t), device)
        if index > 0 or len(batches) == 1:
            steps.append((len(batch), seconds))
    crystals_per_s = sum(n for n, _ in steps) / sum(s for _, s in steps)
    return {
        "step_s": [round(s, 5) for _, s in steps],
        "crystals_per_s": crystals_per_s,
        "epoch_s": train_size / crystals_per_s,
    }


def _inference_ms(ctx: PartContext, preset: str, records: list) -> dict:
    device = ctx.device
    batches = [collate_records([r]).to(device=device, dtype=torch.float32) for r in records]
    model = _trainer(preset, ctx)[0].eval()
    times = []
    with torch.no_grad():
        model(batches[0])  # warm-up
        for batch in batches:
            times.append(timed(lambda b=batch: model(b), device))
    return {"ms_per_material": 1000 * statistics.median(times), "calls": len(times)}


def memory(ctx: PartContext) -> None:
    """Peak memory of a training step per preset at the batch size; the largest cell that trains at batch 1."""
    device, config = ctx.device, ctx.config
    (batch,) = _batches("mp", 1, config.batch_size, device, seed=2)
    ctx.figures["batch"] = {"distribution": "mp", "crystals": len(batch), "atoms": batch.num_atoms}
    ctx.figures["method"] = (
        "torch.cuda.max_memory_allocated over one training step after a warm-up step"
        if device.type == "cuda"
        else "none on the CPU (no allocator peak); steps run to exercise the code"
    )
    peaks = ctx.figures.setdefault("peak_mib", {})
    target = torch.zeros(len(batch), device=device)
    reserve = 0.4 * ctx.budget_s  # for the largest-cell search
    for preset in config.memory_presets or PRESETS:
        if ctx.left() <= reserve:
            ctx.fail(preset, "not run: time budget spent")
            continue
        try:
            model, optimizer = _trainer(preset, ctx)
            training_step(model, optimizer, batch, target)
            if device.type == "cuda":
                synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
            training_step(model, optimizer, batch, target)
            peaks[preset] = torch.cuda.max_memory_allocated(device) / MIB if device.type == "cuda" else None
        except Exception as error:
            peaks[preset] = {"error": ctx.fail(preset, error)}
        finally:
            model = optimizer = None
            free_memory(device)
        ctx.save()
    ctx.figures["largest_cell"] = _largest_cell(ctx, "crystalframer")


def _largest_cell(ctx: PartContext, preset: str) -> dict:
    """Largest atoms per cell (fixed density, batch 1) whose training step runs: doubling, then bisection."""
    device, config = ctx.device, ctx.config
    record = {"preset": preset, "tried": {}, "stopped_by": None}
    trainer = _trainer(preset, ctx)
    ok, failed, atoms, last_seconds = 0, None, config.largest_cell_start, 0.0
    while True:
        if atoms > config.largest_cell_cap:
            record["stopped_by"] = f"size cap {config.largest_cell_cap}"
            break
        # a step costs about atoms² x images; stop when the next one would not fit in the budget
        if ctx.left() <= 0 or (ok and last_seconds * (atoms / ok) ** 2 > ctx.left()):
            record["stopped_by"] = "time budget"
            break
        batch = collate_records([crystals.sweep_record(atoms)]).to(device=device, dtype=torch.float32)
        try:
            last_seconds = timed(lambda b=batch: training_step(*trainer, b, torch.zeros(1, device=device)), device)
            record["tried"][atoms] = round(last_seconds, 4)
            ok = atoms
        except Exception as error:
            if not is_out_of_memory(error):
                raise
            record["tried"][atoms] = "out of memory"
            failed = atoms
        finally:
            batch = None
            free_memory(device)
        ctx.save()
        if failed is None:
            atoms *= 2
        elif failed - ok <= max(1, ok // 16):
            record["stopped_by"] = "out of memory"
            break
        else:
            atoms = (ok + failed) // 2
    record.update(largest_ok=ok, smallest_failed=failed)
    return record


def syncs(ctx: PartContext) -> None:
    """Host-device synchronisations per training step and where in the code they are."""
    device, config = ctx.device, ctx.config
    if device.type != "cuda":
        raise Skipped("needs CUDA: the sync debug mode watches CUDA synchronisations")
    (batch,) = _batches("jarvis", 1, config.batch_size, device, seed=3)
    target = torch.zeros(len(batch), device=device)
    steps = 2
    for preset in SPEED_PRESETS:
        if ctx.left() <= 0:
            ctx.fail(preset, "not run: time budget spent")
            continue
        model, optimizer = _trainer(preset, ctx)
        step = functools.partial(training_step, model, optimizer, batch, target)
        step()  # warm-up: first-call allocations and caches
        synchronize(device)
        locations = _synchronisations(step, steps)
        ctx.figures[preset] = {
            "per_step": sum(locations.values()) / steps,
            "steps": steps,
            "locations": dict(sorted(locations.items(), key=lambda kv: -kv[1])),
        }
        ctx.save()


def _synchronisations(step, repeats: int) -> dict[str, int]:
    """Run ``step()`` ``repeats`` times under CUDA's sync debug mode; count its warnings by code location."""
    locations: dict[str, int] = {}
    previous_show = warnings.showwarning

    def record(message, category, filename, lineno, file=None, line=None):
        if "synchroniz" in str(message).lower():
            where = _innermost_own_frame()
            locations[where] = locations.get(where, 0) + 1
        else:
            previous_show(message, category, filename, lineno, file, line)

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = record
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(repeats):
                step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    return locations


def _innermost_own_frame() -> str:
    """Where a warning was raised: the innermost frame of framer's code (else of the training step in
    ``bench/gpu_check/steps.py``), and the innermost frame of all when that is elsewhere (e.g. in torch)."""
    frames = [f for f in reversed(traceback.extract_stack()) if Path(f.filename).name != "warnings.py"]
    frames = [f for f in frames if Path(f.filename).resolve() != Path(__file__).resolve()]  # this hook

    def relative(frame) -> Path | None:
        path = Path(frame.filename).resolve()
        return path.relative_to(REPO) if REPO in path.parents else None

    own = next((f for f in frames if relative(f) and relative(f).parts[0] == "framer"), None)
    own = own or next((f for f in frames if relative(f) and relative(f).name == "steps.py"), None)
    if own is None:
        return "outside the checkout"
    where = f"{relative(own)}:{own.lineno} {own.name}: {(own.line or '').strip()}"
    innermost = frames[0] if frames else own
    if innermost is not own:
        path = Path(innermost.filename)
        short = "/".join(path.parts[path.parts.index("torch") :]) if "torch" in path.parts else path.name
        where += f" (in {short}:{innermost.lineno} {innermost.name})"
    return where


def compile_check(ctx: PartContext) -> None:
    """``torch.compile``: status, first-call seconds and steady-state training-step seconds against eager."""
    device, config = ctx.device, ctx.config
    backend = "eager" if (config.quick and device.type == "cpu") else "inductor"
    ctx.figures["backend"] = backend
    (batch,) = _batches("jarvis", 1, config.batch_size, device, seed=4)
    target = torch.zeros(len(batch), device=device)
    for preset in config.compile_presets:
        if ctx.left() <= 0:
            ctx.fail(preset, "not run: time budget spent")
            continue
        row = ctx.figures.setdefault(preset, {})
        model, optimizer = _trainer(preset, ctx)
        eager_step = functools.partial(training_step, model, optimizer, batch, target)
        row["eager_step_s"] = statistics.median([timed(eager_step, device) for _ in range(3)][1:])
        row["status"] = "first call (compilation) did not finish"  # what a killed child leaves behind
        ctx.save()
        torch.compiler.reset()  # no cache from an earlier preset
        try:
            compiled_step = functools.partial(
                training_step, torch.compile(model, backend=backend), optimizer, batch, target
            )
            calls = []
            for _ in range(config.compile_steps):
                calls.append(timed(compiled_step, device))
                row["calls_s"] = [round(s, 4) for s in calls]
                ctx.save()
                if ctx.left() <= 0:
                    break
            row["first_call_s"] = calls[0]
            later = calls[1:]
            row["steady_step_s"] = statistics.median(later[len(later) // 2 :]) if later else None
            row["status"] = "ok"
            if row["steady_step_s"]:
                row["speedup_over_eager"] = row["eager_step_s"] / row["steady_step_s"]
                # a later call far slower than the steady state is a recompilation
                row["slow_later_calls"] = sum(s > 5 * row["steady_step_s"] + 0.05 for s in later)
        except Exception as error:
            row["status"] = "failed"
            row["error"] = ctx.fail(preset, error)
        finally:
            model = optimizer = None
            free_memory(device)
        ctx.save()
    if ctx.failures:
        return
    ctx.figures["note"] = one_line(f"backend {backend}; one fixed batch of {len(batch)} JARVIS-like crystals")
