"""Host-device synchronisations of a training step, counted per layer on any device, CPU included.

On a CUDA device the host queues kernels and runs ahead until an operation needs something the device computes:
a number on the host (``item``, ``tolist``, ``bool``/``int``/``float`` of a tensor, the error checks of
``torch.linalg.inv`` or ``eigh``) or an output whose size depends on the data (``nonzero``, boolean-mask indexing,
``masked_select``, ``unique``, ``repeat_interleave`` without ``output_size``, ``bincount``). The host then waits until
the device has run everything queued before it. ``bench/gpu_check`` counts synchronisations on CUDA with CUDA's sync
debug mode; this counts the operations above on any device, by watching every operator of a training step (a
``TorchDispatchMode``) and ``Tensor.tolist``, and names the line of framer that asked. It is an approximation of
the CUDA count: it does not see copies between host and device (the model makes none inside a step) and counts the
checks that CUDA kernels skip (none are left in the model).

Phases: ``graph`` (the batch's edges, images and fixed frames: once per forward), ``layer i`` (the forward of block
i), ``readout``, ``loss`` and ``backward``. The chunks of each layer's image sums are counted too: some
synchronisations happen once per chunk.

    python -m bench.model_checks.syncs                          # every preset, reference batch and real crystals
    python -m bench.model_checks.syncs --presets crystalframer --chunk-sizes 4194304
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import traceback
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from framer.models import CrystalFramer
from framer.models.periodic import PeriodicGraph

aten = torch.ops.aten

#: operators that always make a CUDA host wait: a value read on the host, or an output of data-dependent size
ALWAYS_SYNC = {
    aten._local_scalar_dense.default,  # item(), bool(t), int(t), float(t)
    aten.nonzero.default,
    aten.masked_select.default,
    aten.argwhere.default,
    aten._unique.default,
    aten._unique2.default,
    aten.unique_dim.default,
    aten.unique_consecutive.default,
    aten.bincount.default,
    aten._linalg_check_errors.default,  # torch.linalg.inv / eigh / cholesky raise on bad input: they read an info
}
REPEAT_INTERLEAVE = {aten.repeat_interleave.Tensor, aten.repeat_interleave.self_Tensor}
INDEXING = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default}
REPO = Path(__file__).resolve().parents[2]
GPU_CHUNK_SIZE = 2**27  # what framer.models.periodic.default_chunk_size picks on a CUDA device with >= 32 GiB


def sync_kind(func, args: tuple, kwargs: dict) -> str | None:
    """The name of the synchronising operation ``func(*args, **kwargs)``, or None when it does not wait."""
    if func in ALWAYS_SYNC:
        return func.__name__
    if func in REPEAT_INTERLEAVE and kwargs.get("output_size") is None:
        return "repeat_interleave without output_size"
    if func in INDEXING:
        indices = args[1] if len(args) > 1 else ()
        if any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices):
            return "boolean-mask indexing"
    return None


def _framer_line() -> str:
    """``path:line`` of the innermost frame in framer/ (the code that asked), else the innermost frame."""
    frames = traceback.extract_stack()
    for frame in reversed(frames):
        if "/framer/" in frame.filename and "/_python_dispatch" not in frame.filename:
            return f"{Path(frame.filename).relative_to(REPO)}:{frame.lineno}"
    return f"{frames[-1].filename}:{frames[-1].lineno}"


@dataclass
class SyncCount:
    """Synchronisations per phase, where they come from, and the chunks of each layer's image sums."""

    phase: str = "graph"
    counts: Counter = field(default_factory=Counter)
    where: dict = field(default_factory=lambda: defaultdict(Counter))
    chunks: Counter = field(default_factory=Counter)

    def note(self, kind: str) -> None:
        self.counts[self.phase] += 1
        self.where[self.phase][f"{_framer_line()} {kind}"] += 1

    def summary(self, num_layers: int) -> dict:
        layers = [f"layer {i}" for i in range(num_layers)]
        return {
            "graph": self.counts["graph"],
            "layers": [self.counts[name] for name in layers],
            "chunks_per_layer": [self.chunks[name] for name in layers],
            "readout": self.counts["readout"],
            "loss": self.counts["loss"],
            "backward": self.counts["backward"],
            "where": {phase: dict(sorted(lines.items())) for phase, lines in self.where.items()},
        }


class _Watch(TorchDispatchMode):
    def __init__(self, count: SyncCount):
        super().__init__()
        self.count = count

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        kind = sync_kind(func, args, kwargs)
        if kind is not None:
            self.count.note(kind)
        return func(*args, **kwargs)


def count_syncs(model: torch.nn.Module, batch, target: torch.Tensor, graph_type=PeriodicGraph) -> SyncCount:
    """Count the synchronisations of one training step (forward, L1 loss, backward) of a CrystalFramer-like
    ``model`` (``blocks``, ``head``) on ``batch``. ``graph_type``: the class whose ``layer_chunks`` gives a layer's
    chunks (to count them)."""
    count = SyncCount()
    blocks = list(model.blocks)

    def enter(index: int):
        return lambda module, inputs: setattr(count, "phase", f"layer {index}")

    hooks = [block.register_forward_pre_hook(enter(i)) for i, block in enumerate(blocks)]
    hooks.append(blocks[-1].register_forward_hook(lambda module, inputs, output: setattr(count, "phase", "readout")))
    tolist, layer_chunks = torch.Tensor.tolist, graph_type.layer_chunks

    def counted_tolist(tensor):
        count.note("tolist")
        return tolist(tensor)

    def counted_layer_chunks(graph, *args, **kwargs):
        chunks = layer_chunks(graph, *args, **kwargs)
        count.chunks[count.phase] += len(chunks)
        return chunks

    torch.Tensor.tolist, graph_type.layer_chunks = counted_tolist, counted_layer_chunks
    try:
        with _Watch(count):
            count.phase = "graph"
            loss = torch.nn.functional.l1_loss(model(batch), target)  # phases switch in the hooks
            count.phase = "backward"
            loss.backward()
    finally:
        torch.Tensor.tolist, graph_type.layer_chunks = tolist, layer_chunks
        for hook in hooks:
            hook.remove()
    return count


def trained_model(preset: str, batch, **overrides) -> CrystalFramer:
    """A float32 preset (seed 0) in training mode whose sigma statistics were frozen by a first forward on
    ``batch``, as after the first training step."""
    torch.manual_seed(0)
    model = CrystalFramer.preset(preset, **overrides).train()
    with torch.no_grad():
        model(batch)
    return model


def batches() -> dict:
    """The reference batch of docs/model.md and, where pymatgen is installed, real crystals (symmetric: their
    frames have ties)."""
    from bench.gpu_check.crystals import reference_batch
    from framer.data.batch import collate_records

    found = {"reference batch (16 random crystals, 268 atoms)": reference_batch()}
    try:
        from tests.models.structures import pymatgen_crystals
    except ImportError:  # pymatgen missing
        return found
    real = pymatgen_crystals()
    name = f"pymatgen's test crystals ({len(real)} crystals, {sum(r.num_atoms for r in real)} atoms)"
    found[name] = collate_records(real)
    return found


def measure(presets: list[str], chunk_sizes: list[int]) -> dict:
    results = {"host": socket.gethostname(), "torch": torch.__version__, "runs": []}
    for batch_name, batch in batches().items():
        target = torch.zeros(len(batch))
        for preset in presets:
            for chunk_size in chunk_sizes:
                model = trained_model(preset, batch, chunk_size=chunk_size)
                summary = count_syncs(model, batch, target).summary(len(model.blocks))
                results["runs"].append({"batch": batch_name, "preset": preset, "chunk_size": chunk_size, **summary})
                print(f"{batch_name[:20]:20s} {preset:28s} {chunk_size:>10d} {summary['layers']}", flush=True)
    return results


def markdown(results: dict) -> str:
    lines = [
        "# Host-device synchronisations per training step",
        "",
        f"`python -m bench.model_checks.syncs` on {results['host']} (torch {results['torch']}): operations that make a"
        " CUDA host wait, counted on the CPU (see the module docstring). Presets at full size, float32, sigma"
        " statistics frozen.",
        "",
        "| batch | preset | chunk size | graph | per layer | chunks per layer | readout | backward |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in results["runs"]:
        layers = ", ".join(str(n) for n in run["layers"])
        chunks = ", ".join(str(n) for n in run["chunks_per_layer"])
        lines.append(
            f"| {run['batch']} | {run['preset']} | 2^{run['chunk_size'].bit_length() - 1} | {run['graph']} | "
            f"{layers} | {chunks} | {run['readout']} | {run['backward']} |"
        )
    shown = {}  # per batch: the paper's CrystalFramer (else the first preset) at the largest chunk size
    for run in results["runs"]:
        best = shown.get(run["batch"])
        rank = (run["preset"] == "crystalframer", run["chunk_size"])
        if best is None or rank > (best["preset"] == "crystalframer", best["chunk_size"]):
            shown[run["batch"]] = run
    for run in shown.values():
        lines += [
            "",
            f"Where, for {run['preset']} on the {run['batch']} (chunk size 2^{run['chunk_size'].bit_length() - 1}):",
        ]
        lines += [""] + [
            f"- {phase}: " + "; ".join(f"{place} ({n})" for place, n in places.items())
            for phase, places in run["where"].items()
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--presets", nargs="+", default=list(CrystalFramer.PRESETS))
    parser.add_argument("--chunk-sizes", nargs="+", type=int, default=[2**22, GPU_CHUNK_SIZE])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "model-syncs")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = measure(args.presets, args.chunk_sizes)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(markdown(results))
    print(f"wrote {args.out}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
