"""GPU-minded model code (issue 19 item 3): few host-device synchronisations per layer, none in the backward pass,
and a chunk size chosen for the device.

Synchronisations are counted on the CPU with ``bench.model_checks.syncs`` (the operations that make a CUDA host wait
for the device: ``item``/``tolist``/``bool`` of a tensor, ``nonzero``, boolean-mask indexing, ``unique``,
``repeat_interleave`` without ``output_size``, linalg error checks). Bounds are per layer with the whole layer in one
chunk, plus at most two per further chunk (the compaction of the kept angle entries, and the lattice-sum moments of
atoms whose frames tie).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from bench.model_checks.syncs import count_syncs
from framer.models import CrystalFramer
from framer.models.periodic import CPU_CHUNK_SIZE, default_chunk_size
from framer.testing import make_batch, random_crystal

from .conftest import frozen_model
from .structures import pymatgen_crystals

SMALL = {"num_layers": 2, "model_dim": 32, "num_heads": 4, "ff_dim": 64, "head_dim": 32}
ONE_CHUNK = 2**27  # what a CUDA device with >= 32 GiB picks: every layer of these batches fits in one chunk
# per layer, one chunk: the chunks' sizes (1); angle features: their kept entries (1); dynamic frames: tie candidates
LAYER_BOUND = {"none": 1, "pca": 2, "lattice": 2, "max": 12, "static": 12, "weighted_pca": 12}
TIED_LAYER_BOUND = 24  # real crystals: most atoms have tied frame candidates, decided by a few more reads


def _batches():
    random = make_batch([random_crystal(n, seed=n) for n in (2, 3, 4, 5, 6, 8)], dtype=torch.float32)
    return {"random": random, "real": make_batch(pymatgen_crystals(), dtype=torch.float32)}


BATCHES = _batches()


def _count(preset: str, batch, chunk_size: int) -> dict:
    model = frozen_model(preset, torch.float32, chunk_size=chunk_size, **SMALL).train()
    return count_syncs(model, batch, torch.zeros(len(batch))).summary(len(model.blocks))


@pytest.mark.parametrize("crystals", sorted(BATCHES))
@pytest.mark.parametrize("preset", sorted(CrystalFramer.PRESETS))
def test_a_training_step_waits_for_the_device_a_few_times_per_layer(preset: str, crystals: str) -> None:
    batch = BATCHES[crystals]
    counted = _count(preset, batch, ONE_CHUNK)
    frame = CrystalFramer.preset_kwargs(preset)["frame"]
    bound = (
        TIED_LAYER_BOUND if crystals == "real" and frame in ("max", "static", "weighted_pca") else LAYER_BOUND[frame]
    )
    assert counted["chunks_per_layer"] == [1, 1]
    assert all(n <= bound for n in counted["layers"]), (counted["layers"], counted["where"])
    assert counted["backward"] == 0 and counted["readout"] == 0, counted["where"]
    boxes = len(set(map(tuple, batch.image_box.tolist())))  # the graph: the batch's sizes and boxes read once,
    fixed_frames = {"pca": 2, "lattice": 1}.get(frame, 0)  # then one read per image box and block of edges,
    assert counted["graph"] <= 2 + boxes + fixed_frames, counted["where"]  # and the tied nearest images


@pytest.mark.parametrize("preset", ["crystalframer", "crystalframer-weighted_pca"])
def test_more_chunks_add_at_most_two_waits_each(preset: str) -> None:
    one, many = (_count(preset, BATCHES["real"], size) for size in (ONE_CHUNK, 2**14))
    for layer in range(2):
        extra_chunks = many["chunks_per_layer"][layer] - one["chunks_per_layer"][layer]
        assert extra_chunks >= 50  # the small chunk size does cut each layer into many chunks
        assert many["layers"][layer] - one["layers"][layer] <= 2 * extra_chunks, (many["where"], one["where"])


def test_default_chunk_size_follows_the_device(monkeypatch) -> None:
    """2**22 on a CPU; on CUDA total memory / 256 bytes, a power of two in [2**22, 2**27] (no GPU here: the
    device's memory is faked)."""
    assert default_chunk_size("cpu") == default_chunk_size(torch.device("cpu")) == CPU_CHUNK_SIZE == 2**22
    gib = 2**30
    for memory, expected in [(80 * gib, 2**27), (40 * gib, 2**27), (24 * gib, 2**26), (16 * gib, 2**26),
                             (8 * gib, 2**25), (2 * gib, 2**23), (gib // 2, 2**22)]:  # fmt: skip
        properties = SimpleNamespace(total_memory=memory)
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device, p=properties: p)
        assert default_chunk_size("cuda:0") == expected, memory


def test_models_use_the_device_default_unless_given_a_chunk_size() -> None:
    batch = BATCHES["random"]
    assert CrystalFramer.preset("crystalformer").graph(batch).chunk_size == CPU_CHUNK_SIZE
    assert CrystalFramer.preset("crystalformer", chunk_size=4096).graph(batch).chunk_size == 4096
    with pytest.raises(ValueError, match="chunk_size"):
        CrystalFramer(chunk_size=0)
