"""The physical limit on paper: what one training epoch of JARVIS formation energy must do, and its time on an H100.

Counting (the model's own pruning, by running its forward): the crystals of the synthetic JARVIS-like epoch
(:mod:`bench.gpu_check.crystals`, the same crystals the speed part trains on) go through each preset's forward in
training mode without gradients, with two counters wrapped around the model's code for the duration:
``PeriodicGraph.layer_chunks`` (called once per layer; its chunks hold the (edge, image) pairs the layer keeps) and
the angle lookup of ``framer.models.angles`` (built once per chunk; its length is the number of kept
(edge, head, image) angle entries). Counts are per layer. When only a prefix of the epoch is counted (the time
budget), pair and angle counts are scaled by the epoch's atom pairs (sum of N²) over the prefix's; edge and atom
terms use the epoch's own sums.
Sigma widths and attention come from the untrained model (seed 0): a trained model's differ.

Cost model (float32; an ideal implementation of framer's algorithm that fuses each pass into one kernel and
never writes per-image temporaries; unit costs below, K distance bases, D angle bases, H heads of width d_h,
model width M, feed-forward width F):

====================  ====================================================  ==================================
work item             FLOPs                                                 transcendentals (exp/log/sqrt)
====================  ====================================================  ==================================
(pair, head)          10 + 4K (log-sum-exp, p, dp/da, distance sums)        2
pair                  4K + 4 (distance basis, shared by heads)              K + 1
(pair, head), frames  11 (|cos| with f1, score, arg-max)                    1
angle entry           29 + 24 d_h forward (cosines, interpolation, value     1
                      and d/da bag sums); 12 D backward (W gradient)
(edge, head)          3 (5 d_h + 2 K d_h + 2 K) + 5 (logits, softmax, ψ      1
                      projection, messages; backward twice the forward);
                      + 6 d_h D with angles (W gradient contraction)
atom                  3 (8 M² + 4 M F) (projections and feed-forward,        0
                      forward and backward)
====================  ====================================================  ==================================

Bytes: the kept pairs are stored packed (as ``PeriodicGraph`` stores them): 4 bytes (d²) per pair per pass,
16 with angles (d² and the unit vector); a forward reads them in 2 passes (log-sum-exp, then values) or 3 with
frames (log-sum-exp, frames, values and angles), the backward once more with angles (W gradient). Per
(edge, head) the forward writes 4 + 2 d_h floats (logits, z, E[d²], alpha, ψ and dψ/da) that the backward reads and
answers with as many gradients; per atom 12 M floats per layer.

The bound is max(bytes / bandwidth, FLOPs / FP32 rate, transcendentals / SFU rate) over the whole epoch, for an
H100 SXM: 3.35 TB/s HBM3, 66.9 TFLOP/s float32 without tensor cores (132 SMs x 128 lanes x 2 x 1.98 GHz) and
4.18e12 special-function results/s (132 SMs x 16 per clock x 1.98 GHz). It ignores kernel launches, the host and
the data pipeline: real epochs are slower, and the gap says how much is overhead.
"""

from __future__ import annotations

import contextlib
import itertools
from typing import Any

import numpy as np
import torch

import framer.models.angles as angles_module
from bench.gpu_check import crystals
from bench.gpu_check.harness import PartContext
from bench.gpu_check.steps import SPEED_PRESETS, build_model, copy_to
from framer.data.batch import collate_records
from framer.models.periodic import PeriodicGraph

H100 = {
    "name": "H100 SXM5 80 GB",
    "bandwidth_bytes_s": 3.35e12,
    "fp32_flops_s": 66.9e12,
    "sfu_per_s": 4.18e12,
    "note": "HBM3 bandwidth; float32 without tensor cores; special-function units (exp, log, sqrt)",
}
PAPER_EPOCH_S = {"crystalformer": 32.0, "crystalframer": 74.0, "crystalframer-lightweight": 43.0}
FLOAT_BYTES = 4


class LayerCounter(contextlib.AbstractContextManager):
    """Counts each layer's kept (edge, image) pairs and (edge, head, image) angle entries during forwards."""

    def __init__(self, num_layers: int):
        self.num_layers = num_layers
        self.calls = 0
        self.pairs = [0] * num_layers
        self.angle_entries = [0] * num_layers
        self.edges = 0
        self.atoms = 0

    def __enter__(self):
        counter = self
        self._layer_chunks = PeriodicGraph.layer_chunks
        self._lookup = angles_module._Lookup
        original_chunks, original_lookup = self._layer_chunks, self._lookup

        def layer_chunks(graph, exponent_magnitude):
            chunks = original_chunks(graph, exponent_magnitude)
            layer = counter.calls % counter.num_layers
            if layer == 0:
                counter.edges += graph.num_edges
                counter.atoms += graph.num_atoms
            counter.pairs[layer] += int(sum(int(chunk.valid.sum()) for chunk in chunks))
            counter.calls += 1
            return chunks

        class CountingLookup(original_lookup):
            def __init__(self, heads, cells, *rest):
                super().__init__(heads, cells, *rest)
                counter.angle_entries[(counter.calls - 1) % counter.num_layers] += int(cells.shape[-1])

        PeriodicGraph.layer_chunks = layer_chunks
        angles_module._Lookup = CountingLookup
        return self

    def __exit__(self, *exc):
        PeriodicGraph.layer_chunks = self._layer_chunks
        angles_module._Lookup = self._lookup
        return False


def count(preset: str, crystal_count: int, ctx: PartContext, deadline_left) -> dict[str, Any]:
    """Per-layer counts of ``preset`` over the first ``crystal_count`` crystals of the JARVIS-like epoch, in
    batches of the configured size (stopping early when ``deadline_left()`` runs out)."""
    device, batch_size = ctx.device, ctx.config.batch_size
    model = build_model(preset, crystals.reference_batch(1), **ctx.config.model_overrides)
    model = copy_to(model, device, torch.float32)
    layers = len(model.blocks)
    records = crystals.iter_like_records("jarvis", crystal_count, seed=0)
    counted = []
    with LayerCounter(layers) as counter, torch.no_grad():
        while chunk := list(itertools.islice(records, batch_size)):
            model(collate_records(chunk).to(device=device, dtype=torch.float32))
            counted.extend(chunk)
            if deadline_left() <= 0:
                break
    sizes = np.array([r.num_atoms for r in counted])
    return {
        "crystals": len(counted),
        "atoms": int(sizes.sum()),
        "edges": int((sizes**2).sum()),
        "pairs_per_layer": counter.pairs,
        "angle_entries_per_layer": counter.angle_entries,
        "shape": {k: model.init_args[k] for k in ("num_layers", "model_dim", "num_heads", "ff_dim", "dist_basis")}
        | {"angle_basis": model.init_args["angle_basis"] if model.frame != "none" else 0, "frame": model.frame},
    }


def epoch_cost(counts: dict, epoch_atoms: int, epoch_edges: int) -> dict[str, Any]:
    """FLOPs, transcendentals and bytes of one training epoch (forward and backward) from the counts of a prefix."""
    shape = counts["shape"]
    heads, width, k_dist = shape["num_heads"], shape["model_dim"], shape["dist_basis"]
    d_h, d_ang, ff = width // heads, shape["angle_basis"], shape["ff_dim"]
    frames = d_ang > 0
    pair_scale = epoch_edges / counts["edges"]
    pairs = [p * pair_scale for p in counts["pairs_per_layer"]]
    entries = [t * pair_scale for t in counts["angle_entries_per_layer"]]
    edges, atoms = float(epoch_edges), float(epoch_atoms)
    flops = exps = bytes_ = 0.0
    for p, t in zip(pairs, entries):
        flops += p * heads * (10 + 4 * k_dist) + p * (4 * k_dist + 4)
        exps += p * heads * 2 + p * (k_dist + 1)
        edge_head = 3 * (5 * d_h + 2 * k_dist * d_h + 2 * k_dist) + 5
        flops += edges * heads * edge_head + atoms * 3 * (8 * width**2 + 4 * width * ff)
        exps += edges * heads
        pair_bytes = 16 if frames else 4
        passes = 4 if frames else 2
        bytes_ += p * pair_bytes * passes
        bytes_ += edges * heads * (4 + 2 * d_h) * FLOAT_BYTES * 3  # written, read back, gradients written
        bytes_ += atoms * 12 * width * FLOAT_BYTES
        if frames:
            flops += p * heads * 11 + t * (29 + 24 * d_h + 12 * d_ang) + edges * heads * 6 * d_h * d_ang
            exps += p * heads + t
    seconds = {
        "memory": bytes_ / H100["bandwidth_bytes_s"],
        "fp32": flops / H100["fp32_flops_s"],
        "special_functions": exps / H100["sfu_per_s"],
    }
    bound = max(seconds.values())
    return {
        "pairs_per_layer": pairs,
        "angle_entries_per_layer": entries,
        "edges": edges,
        "atoms": atoms,
        "flops": flops,
        "transcendentals": exps,
        "bytes": bytes_,
        "seconds": seconds,
        "bound_s": bound,
        "bound_by": max(seconds, key=seconds.get),
        "scaled_from_crystals": counts["crystals"],
    }


def limit(ctx: PartContext) -> None:
    """Counts of a JARVIS-like training epoch per preset and the H100 lower bound on its time."""
    config = ctx.config
    distribution = crystals.SIZE_DISTRIBUTIONS["jarvis"]
    epoch_sizes = np.array(distribution.sizes(distribution.train_size, seed=0))
    epoch_atoms, epoch_edges = int(epoch_sizes.sum()), int((epoch_sizes**2).sum())
    wanted = min(config.limit_crystals or distribution.train_size, distribution.train_size)
    ctx.figures["epoch"] = {
        "distribution": distribution.name,
        "crystals": distribution.train_size,
        "atoms": epoch_atoms,
        "edges": epoch_edges,
    }
    ctx.figures["device"] = H100
    measured = ctx.previous.get("speed", {}).get("figures", {}).get("jarvis", {})
    presets = ctx.figures.setdefault("presets", {})
    for index, preset in enumerate(SPEED_PRESETS):
        share = ctx.left() / (len(SPEED_PRESETS) - index)  # split what is left between the remaining presets
        if share <= 0:
            ctx.fail(preset, "not run: time budget spent")
            continue
        stop = ctx.left() - share
        counts = count(preset, wanted, ctx, lambda stop=stop: ctx.left() - stop)
        row = {"counted": counts, "epoch": epoch_cost(counts, epoch_atoms, epoch_edges)}
        row["paper_epoch_s"] = PAPER_EPOCH_S[preset]
        row["paper_over_bound"] = PAPER_EPOCH_S[preset] / row["epoch"]["bound_s"]
        measured_epoch = measured.get(preset, {}).get("epoch_s")
        if measured_epoch:
            row["measured_epoch_s"] = measured_epoch
            row["measured_device"] = ctx.previous.get("environment", {}).get("figures", {}).get("device_name")
            row["measured_over_bound"] = measured_epoch / row["epoch"]["bound_s"]
        presets[preset] = row
        ctx.save()
