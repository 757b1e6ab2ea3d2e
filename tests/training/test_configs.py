"""Every YAML under conf/ and sweeps/ parses; every experiment composes with conf/default.yaml into a valid config."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest
import yaml

from framer.cli import FramerCLI

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "conf"
YAML_FILES = sorted([*CONF.rglob("*.yaml"), *(REPO / "sweeps").glob("**/*.yaml")])
EXPERIMENTS = sorted((CONF / "experiments").glob("*/*.yaml"))
GENERATOR = runpy.run_path(str(CONF / "experiments" / "generate.py"))

# parameter counts of the paper's networks (model-spec.md §3)
PAPER_PARAMS = {"crystalformer": 853_517, "crystalframer": 951_821, "crystalframer-lightweight": 878_093}


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_yaml_parses(path):
    assert yaml.safe_load(path.read_text()) is not None


def test_one_experiment_per_cell_and_files_up_to_date():
    assert len(EXPERIMENTS) == 63
    assert GENERATOR["main"](["--check"]) == 0


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


def _compose(parser, *files: Path):
    args = ["fit"]
    for f in files:
        args += ["--config", str(f)]
    return parser.parse_args(args)["fit"]


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_experiment_composes(parser, path):
    config = _compose(parser, CONF / "default.yaml", path)
    data, preset = path.parent.name, path.stem
    data_file = yaml.safe_load((CONF / "data" / f"{data}.yaml").read_text())
    assert config.data.class_path == data_file["data"]["class_path"]
    assert config.data.init_args.target == data_file["data"]["init_args"]["target"]
    assert config.data.init_args.batch_size == (128 if data.startswith("mp_") else 256)
    assert config.trainer.max_epochs == (500 if data.startswith("mp_") else 2000)
    assert config.tracking.run_name == f"{data}-{preset}"
    assert config.seed_everything == 123 and config.trainer.gradient_clip_val == 1.0
    model = config.model.init_args.model
    assert model.class_path == "framer.models.CrystalFramer"
    from framer.models import CrystalFramer

    composed = dict(model.init_args)
    expected = {**{k: composed[k] for k in composed}, **CrystalFramer.preset_kwargs(preset)}
    assert composed == expected
    model_file = CONF / "model" / f"{preset}.yaml"
    if model_file.is_file():  # the experiment's network is the preset file's network
        preset_config = _compose(parser, CONF / "default.yaml", model_file)
        assert dict(preset_config.model.init_args.model.init_args) == composed


@pytest.mark.parametrize("preset", sorted(PAPER_PARAMS))
def test_composed_networks_have_the_papers_size(parser, preset):
    from framer.models import CrystalFramer

    config = _compose(parser, CONF / "default.yaml", CONF / "experiments" / "mp_e_form" / f"{preset}.yaml")
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


PAPER_COLUMNS = yaml.safe_load((CONF / "paper_results.yaml").read_text())["columns"]


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_generated_cell_equals_the_composed_cell(parser, path):
    """Temporary (issue 16 step 2): default + data/<dataset> + model/<preset> + target is the generated file."""
    cell, preset = path.parent.name, path.stem
    dataset, _, target = cell.partition("_")
    old = _compose(parser, CONF / "default.yaml", path).as_dict()
    args = ["fit", "--config", str(CONF / "default.yaml"), "--config", str(CONF / "data" / f"{dataset}.yaml")]
    args += ["--config", str(CONF / "model" / f"{preset}.yaml"), f"--data.init_args.target={target}"]
    new = parser.parse_args(args)["fit"].as_dict()
    for config in (old, new):
        del config["tracking"]["run_name"], config["config"]
    assert new == old
