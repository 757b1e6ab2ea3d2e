"""Measure one case in this (fresh) process: ``python bench/speed/worker.py SPEC.json`` writes ``spec["output"]``.

The runner starts this file by path with the checkout under test first on ``PYTHONPATH``, so the same harness can
measure another revision. It therefore uses only the model API that every version has
(``framer.models.CrystalFramer.preset``, ``framer.data.collate_structures``, ``model(batch)``; ``model.graph`` to count
periodic images when it exists) and never imports ``bench`` (the measured checkout may have a ``bench`` package of
its own); :mod:`timing` is loaded from the file next to this one.

A case is a model preset, a list of structures and a list of stages run in order on the same model, e.g. inference
on the first crystal, inference on all, then training steps on all. The model is built after ``torch.manual_seed``
and its sigma statistics are first frozen by one training-mode forward without gradients on the first crystal, as in
a trained model. Inference runs in eval mode under ``torch.no_grad``; a training step is forward, L1 loss against
zeros, backward and an AdamW step (lr 1e-4). Stages run in
increasing order of memory so each stage's resident-set high-water mark is its own peak (see :mod:`timing`).

A paired spec (``spec["paired"]``: several presets) instead interleaves training steps of those presets in this one
process (:func:`measure_paired`), for ratios that a drifting machine speed disturbs little.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if sys.path and Path(sys.path[0] or ".").resolve() == HERE:
    sys.path.pop(0)  # run by path: do not let this directory's modules shadow top-level names


def _load_timing():
    if __package__:
        from bench.speed import timing

        return timing
    spec = importlib.util.spec_from_file_location("_bench_speed_timing", HERE / "timing.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _error_text(error: BaseException, limit: int = 2000) -> str:
    text = f"{type(error).__name__}: {error}".strip()
    return text if len(text) <= limit else text[: limit - 20] + " ... (truncated)"


def _training_step(model, optimizer, batch, target):
    """The measured training step: forward, L1 loss against ``target``, backward and an optimizer step."""
    import torch

    optimizer.zero_grad(set_to_none=True)
    loss = torch.nn.functional.l1_loss(model(batch), target)
    loss.backward()
    optimizer.step()
    return loss


def _setup(spec: dict[str, Any]):
    """Apply ``spec``'s thread count; return its device, dtype and structures."""
    import torch
    from pymatgen.core import Structure

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    device = torch.device(spec.get("device", "cpu"))
    dtype = getattr(torch, spec.get("dtype", "float32"))
    structures = [Structure.from_dict(d) for d in json.loads(Path(spec["structures"]).read_text())]
    return device, dtype, structures


def measure_paired(spec: dict[str, Any]) -> dict[str, Any]:
    """Training steps of several presets interleaved in this one process: ``spec["paired"]`` lists the presets,
    ``spec["paired_rounds"]`` how many rounds of one step each (after one untimed step each).

    Steps of different presets taken one after another see the same machine speed, so their ratios are far less
    disturbed by a host whose speed drifts than figures from separate processes minutes apart.
    """
    import torch

    from framer.data import collate_structures
    from framer.models import CrystalFramer

    timing = _load_timing()
    device, dtype, structures = _setup(spec)
    batch = collate_structures(structures).to(device=device, dtype=dtype)
    first = collate_structures(structures[:1]).to(device=device, dtype=dtype)
    target = torch.zeros(len(structures), device=device, dtype=dtype)
    steps = {}
    for preset in spec["paired"]:
        torch.manual_seed(int(spec.get("seed", 0)))
        model = CrystalFramer.preset(preset, **spec.get("overrides", {})).to(device=device, dtype=dtype).train()
        with torch.no_grad():  # freeze the sigma statistics on the first crystal, as measure() does
            model(first)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        step = functools.partial(_training_step, model, optimizer, batch, target)
        step()  # untimed: first-call costs
        steps[preset] = step
    wall = {preset: [] for preset in steps}
    cpu = {preset: [] for preset in steps}
    for _ in range(int(spec.get("paired_rounds", 5))):
        for preset, step in steps.items():
            timing.synchronize(device)
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            step()
            timing.synchronize(device)
            wall[preset].append(time.perf_counter() - start_wall)
            cpu[preset].append(time.process_time() - start_cpu)
    return {"crystals": len(structures), "train_wall_s": wall, "train_cpu_s": cpu, "threads": torch.get_num_threads()}


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Run the stages of ``spec`` and return their figures (errors are recorded per stage, not raised)."""
    import torch

    if spec.get("paired"):
        return measure_paired(spec)
    timing = _load_timing()
    device, dtype, structures = _setup(spec)
    import framer
    from framer.data import collate_structures
    from framer.models import CrystalFramer

    root = str(Path(framer.__file__).resolve().parent.parent)
    expected = spec.get("expect_root")
    if expected and Path(expected).resolve() != Path(root):
        raise RuntimeError(f"imported framer from {root}, expected {expected}")
    result: dict[str, Any] = {
        "framer_root": root,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "pid": os.getpid(),
        "load_average_start": _load_average(),
        "stages": {},
    }

    torch.manual_seed(int(spec.get("seed", 0)))
    model = CrystalFramer.preset(spec["preset"], **spec.get("overrides", {})).to(device=device, dtype=dtype)
    result["parameters"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    runner = model
    if spec.get("compile"):
        result["compile"] = {"status": "not run"}
        try:
            runner = torch.compile(model, **spec.get("compile_options", {}))
            result["compile"] = {"status": "wrapped (compiles on the first call)"}
        except Exception as error:  # recorded, not raised: compile support varies by platform
            result["compile"] = {"status": "failed", "error": _error_text(error), "where": "torch.compile()"}
            return result
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batches = {}

    def batch_of(count: int | None):
        count = len(structures) if count is None else count
        if count not in batches:
            batches[count] = collate_structures(structures[:count]).to(device=device, dtype=dtype)
        return batches[count]

    for count in {stage.get("crystals") for stage in spec["stages"]}:
        batch_of(count)  # collate before the baseline: data loading is not measured
    if spec.get("freeze_stats", True):
        # Like a trained model, freeze the sigma standardisation statistics (on the first crystal, which keeps the
        # resident set small) so inference does not standardise with each batch's own statistics.
        model.train()
        with torch.no_grad():
            model(batch_of(1))
    memory = timing.PeakMemory(device)
    result["memory_method"] = memory.method
    result["baseline_rss_mib"] = memory.baseline_rss / timing.MIB

    for stage in spec["stages"]:
        name, kind = stage["name"], stage["kind"]
        batch = batch_of(stage.get("crystals"))
        crystals = len(batch.sizes)
        record: dict[str, Any] = {
            "kind": kind,
            "crystals": crystals,
            "atoms": int(batch.sizes.sum()),
            "atom_pairs": int((batch.sizes**2).sum()),
        }
        last: dict[str, Any] = {}
        if kind == "train":
            target = torch.zeros(crystals, device=device, dtype=dtype)
            call = functools.partial(_training_step, runner, optimizer, batch, target)
            model.train()
        elif kind == "infer":

            def call(batch=batch, last=last):
                with torch.no_grad():
                    last["outputs"] = runner(batch)

            model.eval()
        else:
            raise ValueError(f"unknown stage kind {kind!r}")
        memory.start_stage()
        start = time.perf_counter()
        try:
            record.update(
                timing.time_calls(
                    call,
                    device,
                    warmup=int(stage.get("warmup", 1)),
                    repeats=int(stage.get("repeats", 3)),
                    budget=float(stage.get("budget", float("inf"))),
                )
            )
        except Exception as error:  # e.g. out of memory, or a torch.compile failure on the first call
            record["error"] = _error_text(error)
            record["traceback"] = traceback.format_exc(limit=8)[-4000:]
            if spec.get("compile"):
                result["compile"] = {"status": "failed", "error": record["error"], "where": f"first call ({name})"}
        record["stage_s"] = time.perf_counter() - start
        record["peak_mib"] = memory.stage_peak_mib()
        record["process_peak_mib"] = memory.absolute_peak_mib()
        if "wall_s" in record:
            record["ms_per_crystal"] = 1000 * record["wall_s"] / crystals
            record["cpu_ms_per_crystal"] = 1000 * record["cpu_s"] / crystals
            record["crystals_per_s"] = crystals / record["wall_s"]
            if "outputs" in last and stage.get("outputs"):
                record["outputs"] = [float(v) for v in last["outputs"].detach().cpu()]
        result["stages"][name] = record
    if spec.get("compile") and result["compile"]["status"].startswith("wrapped"):
        result["compile"]["status"] = "ok"

    result["load_average_end"] = _load_average()
    if spec.get("count_images", True):
        result["graph"] = count_images(model, batch_of(None))
    return result


def _load_average() -> list[float] | None:
    """1, 5 and 15-minute load averages (other processes on a shared machine inflate wall times)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def count_images(model, batch) -> dict[str, Any]:
    """Edges (atom pairs) and kept (edge, image) pairs of the model's periodic graph for ``batch``, if exposed."""
    import torch

    try:
        with torch.no_grad():
            graph = model.graph(batch)
        return {"edges": int(graph.num_edges), "images": int(graph.num_images)}
    except Exception as error:  # older or newer models may not expose the graph
        return {"error": _error_text(error, 300)}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(Path(argv[0]).read_text())
    try:
        result = {"ok": True, **measure(spec)}
    except Exception as error:
        result = {"ok": False, "error": _error_text(error), "traceback": traceback.format_exc(limit=12)[-6000:]}
    output = Path(spec["output"])
    tmp = output.with_name(output.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, output)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
