"""Public API of framer.models: parameter counts, presets and their YAML files, sigma statistics, state dicts."""

from __future__ import annotations

import copy
import inspect
import socket
from pathlib import Path

import pytest
import torch
import yaml

from framer.models import CrystalFramer
from framer.testing import make_batch, random_crystal

CONF = Path(__file__).resolve().parents[2] / "conf" / "model"
PAPER_COUNTS = {"crystalformer": 853_517, "crystalframer": 951_821, "crystalframer-lightweight": 878_093}


@pytest.mark.parametrize(("preset", "count"), sorted(PAPER_COUNTS.items()))
def test_parameter_counts(preset: str, count: int) -> None:
    model = CrystalFramer.preset(preset)
    assert sum(p.numel() for p in model.parameters()) == count


def test_frame_baselines_have_default_size() -> None:
    for frame in ("pca", "lattice", "static", "weighted_pca"):
        model = CrystalFramer.preset(f"crystalframer-{frame}")
        assert sum(p.numel() for p in model.parameters()) == PAPER_COUNTS["crystalframer"]


def test_three_frozen_scalars_per_block() -> None:
    frozen = [n for n, p in CrystalFramer().named_parameters() if not p.requires_grad]
    assert len(frozen) == 3 * 4


@pytest.mark.parametrize("preset", sorted(CrystalFramer.PRESETS))
def test_preset_yaml(preset: str) -> None:
    """conf/model/<preset>.yaml fills the ``model.init_args.model`` slot with exactly the preset's arguments."""
    config = yaml.safe_load((CONF / f"{preset}.yaml").read_text())
    network = config["model"]["init_args"]["model"]
    assert network["class_path"] == "framer.models.CrystalFramer"
    assert network["init_args"] == CrystalFramer.preset_kwargs(preset)


def test_every_yaml_is_a_preset() -> None:
    presets = {p.stem for p in CONF.glob("*.yaml") if not p.stem.endswith("-small")}  # small ones: test_configs.py
    assert presets == set(CrystalFramer.PRESETS)


def test_signature_is_typed_and_documented() -> None:
    """LightningCLI builds its schema from the type hints and the Google-style Args section."""
    doc = CrystalFramer.__doc__
    for name, parameter in inspect.signature(CrystalFramer.__init__).parameters.items():
        if name == "self":
            continue
        assert parameter.annotation is not inspect.Parameter.empty, name
        assert f"{name}:" in doc, name


def test_unknown_preset_and_frame() -> None:
    with pytest.raises(ValueError, match="unknown preset"):
        CrystalFramer.preset_kwargs("nope")
    with pytest.raises(ValueError, match="unknown frame"):
        CrystalFramer(frame="nope")


def _batch(seed: int = 0, dtype=torch.float64):
    return make_batch([random_crystal(3, seed=seed + i) for i in range(2)], dtype=dtype)


def test_sigma_statistics_freeze_after_first_training_batch() -> None:
    model = CrystalFramer.preset("crystalformer", num_layers=2).double()
    attention = model.blocks[0].attention
    model.eval()
    with torch.no_grad():
        model(_batch(0))
    assert attention.sigma_ready.item() == 0  # eval before training: per-batch statistics, nothing stored
    model.train()
    model(_batch(1))
    stats = (attention.sigma_mean.item(), attention.sigma_inv_std.item())
    assert attention.sigma_ready.item() == 1 and stats != (0.0, 1.0)
    model(_batch(2))
    assert (attention.sigma_mean.item(), attention.sigma_inv_std.item()) == stats  # frozen


def test_state_dict_round_trip_keeps_statistics() -> None:
    model = CrystalFramer.preset("crystalframer-lightweight", num_layers=2).double().train()
    model(_batch(1))
    clone = CrystalFramer.preset("crystalframer-lightweight", num_layers=2).double()
    clone.load_state_dict(model.state_dict())
    model.eval()
    clone.eval()
    batch = _batch(5)
    with torch.no_grad():
        assert torch.equal(model(batch), clone(batch))
    assert torch.equal(copy.deepcopy(model)(batch), model(batch))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_statistics_are_averaged_under_distributed() -> None:
    """With a process group the first-batch statistics go through all_reduce (world size 1 here)."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        model = CrystalFramer.preset("crystalformer", num_layers=1).double().train()
        model(_batch(1))
        attention = model.blocks[0].attention
        assert attention.sigma_ready.item() == 1
    finally:
        dist.destroy_process_group()
    torch.manual_seed(0)
    reference = CrystalFramer.preset("crystalformer", num_layers=1).double().train()
    reference(_batch(1))
    assert attention.sigma_mean.item() == pytest.approx(reference.blocks[0].attention.sigma_mean.item(), abs=1e-12)


def test_loss_decreases(dtype: torch.dtype, device: torch.device) -> None:
    """A quick sanity check of the model alone: a few AdamW steps reduce the L1 loss on 4 crystals."""
    model = CrystalFramer.preset("crystalframer-lightweight", num_layers=2, model_dim=32, head_dim=32, ff_dim=64)
    model = model.to(device, dtype)
    batch = make_batch([random_crystal(2 + i, seed=40 + i) for i in range(4)], dtype=dtype).to(device)
    target = torch.tensor([1.0, -1.0, 0.5, 2.0], dtype=dtype, device=device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        loss = torch.nn.functional.l1_loss(model(batch), target)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
