"""Every YAML under conf/ and sweeps/ parses; every cell of the paper's table composes from conf/default.yaml,
conf/data/<dataset>.yaml, conf/model/<preset>.yaml and a target into the paper's settings."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from framer.cli import FramerCLI

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "conf"
YAML_FILES = sorted([*CONF.rglob("*.yaml"), *(REPO / "sweeps").glob("**/*.yaml")])
PAPER = yaml.safe_load((CONF / "paper_results.yaml").read_text())

# parameter counts of the paper's networks (docs/model.md, "Public API": the preset table)
PAPER_PARAMS = {"crystalformer": 853_517, "crystalframer": 951_821, "crystalframer-lightweight": 878_093}


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_yaml_parses(path):
    assert yaml.safe_load(path.read_text()) is not None


@pytest.fixture(scope="module")
def parser():
    """The CLI's parser (built once; parsing only, nothing instantiated)."""

    class ParseOnly(FramerCLI):
        def before_instantiate_classes(self):
            raise _Parsed(self)

    try:
        ParseOnly(args=["fit", "--config", str(CONF / "default.yaml")])
    except _Parsed as parsed:
        return parsed.cli.parser
    raise AssertionError("unreachable")


class _Parsed(Exception):
    def __init__(self, cli):
        self.cli = cli


def _compose(parser, *files: Path, overrides: tuple[str, ...] = ()):
    args = ["fit"]
    for f in files:
        args += ["--config", str(f)]
    return parser.parse_args([*args, *overrides])["fit"]


def _cell(parser, dataset: str, target: str, preset: str):
    """A cell of the paper's table as conf/reproduce/paper.yaml composes it."""
    files = (CONF / "default.yaml", CONF / "data" / f"{dataset}.yaml", CONF / "model" / f"{preset}.yaml")
    return _compose(parser, *files, overrides=(f"--data.init_args.target={target}",))


# Every column once, each with another preset, so all 9 columns and all 7 presets appear. The data and model files
# set disjoint keys (data: epochs, batch, class, target; model: the network), so these cover the 63 cells.
CELLS = [
    (c["dataset"], c["target"], list(PAPER["models"])[i % len(PAPER["models"])]) for i, c in enumerate(PAPER["columns"])
]
DATASET = {"mp": ("framer.data.MPDataModule", 500, 128), "jarvis": ("framer.data.JarvisDataModule", 2000, 256)}


@pytest.fixture(scope="module")
def default(parser):
    return _compose(parser, CONF / "default.yaml")


@pytest.mark.parametrize(("dataset", "target", "preset"), CELLS, ids=lambda x: x)
def test_every_table_cell_composes(parser, default, dataset, target, preset):
    from framer.models import CrystalFramer

    config = _cell(parser, dataset, target, preset)
    data_class, epochs, batch_size = DATASET[dataset]
    assert config.data.class_path == data_class and config.data.init_args.target == target
    assert config.data.init_args.batch_size == batch_size and config.data.init_args.test_batch_size == 1
    assert config.trainer.max_epochs == epochs
    assert config.seed_everything == 123 and config.trainer.gradient_clip_val == 1.0
    model = config.model.init_args.model
    assert model.class_path == "framer.models.CrystalFramer"
    network = dict(model.init_args)
    assert network == {**network, **CrystalFramer.preset_kwargs(preset)}
    assert config.model.init_args.optimizer == default.model.init_args.optimizer  # the recipe is untouched
    assert config.model.init_args.lr_scheduler == default.model.init_args.lr_scheduler


PRESET_FILES = {p.stem for p in (CONF / "model").glob("*.yaml") if not p.stem.endswith("-small")}
SMALL_FILES = sorted(p.stem for p in (CONF / "model").glob("*-small.yaml"))
SMALL = {"num_layers": 2, "model_dim": 32, "num_heads": 4, "ff_dim": 128, "head_dim": 32, "dist_basis": 32}


def test_every_preset_and_column_is_a_cell():
    assert {preset for *_, preset in CELLS} == set(PAPER["models"]) == PRESET_FILES
    assert {dataset for dataset, *_ in CELLS} == set(DATASET)


def test_default_repeats_the_mp_data_config(parser, default):
    """conf/default.yaml is a complete run, so it repeats conf/data/mp.yaml; composing the two changes nothing
    but the run name."""
    alone = default.as_dict()
    with_mp = _compose(parser, CONF / "default.yaml", CONF / "data" / "mp.yaml").as_dict()
    for config in (alone, with_mp):
        del config["tracking"]["run_name"], config["config"]
    assert alone == with_mp


@pytest.mark.parametrize("preset", sorted(PAPER_PARAMS))
def test_composed_networks_have_the_papers_size(parser, preset):
    from framer.models import CrystalFramer

    config = _cell(parser, "mp", "e_form", preset)
    network = CrystalFramer(**dict(config.model.init_args.model.init_args))
    assert sum(p.numel() for p in network.parameters()) == PAPER_PARAMS[preset]


def test_default_is_the_papers_recipe(parser):
    config = _compose(parser, CONF / "default.yaml")
    init = config.model.init_args
    assert init.model.init_args.frame == "max" and init.model.init_args.angle_basis == 64
    assert init.optimizer.class_path == "torch.optim.AdamW"
    assert init.optimizer.init_args.lr == 5e-4 and list(init.optimizer.init_args.betas) == [0.9, 0.98]
    assert init.optimizer.init_args.weight_decay == 1e-5
    assert init.lr_scheduler.init_args.decay_steps == 4000 and init.swa_epochs == 50
    assert config.data.class_path == "framer.data.MPDataModule" and config.data.init_args.target == "e_form"
    assert config.data.init_args.batch_size == 128 and config.data.init_args.test_batch_size == 1
    assert config.trainer.max_epochs == 500 and config.trainer.accelerator == "auto"
    assert config.checkpoint.monitor == "val/mae" and config.checkpoint.save_last is True
    bar = config.trainer.callbacks[0]
    assert bar.class_path.endswith("TQDMProgressBar") and bar.init_args.refresh_rate == 50


@pytest.mark.parametrize("name", ["cpu", "gpu", "ddp", "debug", "interactive"])
def test_trainer_configs_compose(parser, name):
    config = _compose(parser, CONF / "default.yaml", CONF / "trainer" / f"{name}.yaml")
    if name == "ddp":
        assert config.trainer.strategy == "ddp" and config.trainer.devices == "auto"
    if name == "interactive":
        assert config.trainer.callbacks[0].class_path.endswith("RichProgressBar")


@pytest.mark.parametrize("name", ["smoke", "overfit", "tiny_model"])
def test_debug_configs_compose(parser, name):
    config = _compose(parser, CONF / "default.yaml", CONF / "data" / "ewald.yaml", CONF / "debug" / f"{name}.yaml")
    assert config.data.class_path == "framer.data.EwaldDataModule"


def test_every_preset_has_a_small_config():
    from framer.models import CrystalFramer

    assert {f"{preset}-small" for preset in CrystalFramer.PRESETS} == set(SMALL_FILES)
    assert set(CrystalFramer.PRESETS) == PRESET_FILES


@pytest.mark.parametrize("small", SMALL_FILES)
def test_small_configs_compose_and_build_the_demo_size(parser, small):
    """conf/model/<preset>-small.yaml: the preset's frame and coefficients at the demo's size, built from the CLI."""
    from framer.models import CrystalFramer

    preset = small.removesuffix("-small")
    config = _compose(parser, CONF / "default.yaml", CONF / "model" / f"{small}.yaml")
    network = dict(config.model.init_args.model.init_args)
    assert network == {**network, **SMALL}
    expected = CrystalFramer.preset_kwargs(preset)
    if preset != "crystalformer":
        expected.update(angle_basis=16, angle_width=1.0)
    assert network == {**network, **expected}
    model = CrystalFramer(**network)
    assert sum(p.numel() for p in model.parameters()) < 60_000  # the demo's models have 31,495 and 34,567
