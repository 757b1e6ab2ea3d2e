"""The command line on a newcomer's first day (issue 17): typos are caught and explained, runs are named after what
they train, threads and batch counts mean what they say, and a fit prints no noise."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from framer.cli import FramerCLI, main

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "conf"
DEFAULT = ["fit", "--config", str(CONF / "default.yaml")]
STANDINS = [
    "--model.init_args.model=training_standins.TinyModel",
    "--model.init_args.model.init_args.hidden=8",
    "--data=training_standins.TinyDataModule",
    "--data.init_args.num_crystals=40",
    "--data.init_args.batch_size=8",
    "--trainer.accelerator=cpu",
    "--model.init_args.swa_epochs=1",
]


def one_error(args: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err[-2000:]
    errors = [line for line in err.splitlines() if line.startswith("framer:")]
    assert len(errors) == 1 and errors[0].startswith("framer: error: "), err[-2000:]
    return errors[0]


def test_options_are_not_abbreviated_and_typos_get_a_suggestion(workdir, capsys):
    line = one_error([*DEFAULT, "--trainer.max_epoch", "3", "--print_config"], capsys)
    assert "--trainer.max_epoch" in line and "did you mean 'trainer.max_epochs'?" in line
    line = one_error([*DEFAULT, "--trainer.max_epocsh=3"], capsys)
    assert "did you mean 'trainer.max_epochs'?" in line
    line = one_error([*DEFAULT, "--model.init_args.model.init_args.angle_basiz=3"], capsys)
    assert "'angle_basiz'" in line and "did you mean 'angle_basis'?" in line


def test_a_typo_in_a_config_file_names_the_file(workdir, capsys):
    (workdir / "mine.yaml").write_text("trainer:\n  max_epochs: 3\n")
    (workdir / "typo.yaml").write_text("model:\n  init_args:\n    model:\n      init_args:\n        angle_basiz: 3\n")
    line = one_error([*DEFAULT, "--config", "mine.yaml", "--config", "typo.yaml"], capsys)
    assert "typo.yaml" in line and "mine.yaml" not in line and "did you mean 'angle_basis'?" in line
    (workdir / "typo.yaml").write_text("trainer:\n  max_epoch: 3\n")
    line = one_error([*DEFAULT, "--config", "typo.yaml"], capsys)
    assert "typo.yaml" in line and "did you mean 'trainer.max_epochs'?" in line


class _Parsed(Exception):
    def __init__(self, cli):
        self.cli = cli


class ParseOnly(FramerCLI):
    def before_instantiate_classes(self):
        raise _Parsed(self)


def run_name(*args: str) -> str:
    try:
        ParseOnly(args=[*DEFAULT, *args])
    except _Parsed as parsed:
        return parsed.cli.config["fit"].tracking.run_name
    raise AssertionError("unreachable")


def test_default_run_names_say_data_target_and_model(workdir):
    custom = ["--config", str(CONF / "data" / "custom.yaml"), "--data.init_args.root=.", "--data.init_args.target=gap"]
    small = [
        run_name(*custom, "--config", str(CONF / "model" / f"{m}-small.yaml"))
        for m in ("crystalformer", "crystalframer")
    ]
    assert small == ["custom-gap-crystalformer-small", "custom-gap-crystalframer-small"]
    assert run_name() == "mp-e_form-crystalframer"
    jarvis = [
        "--config",
        str(CONF / "data" / "jarvis.yaml"),
        "--config",
        str(CONF / "model" / "crystalframer-pca.yaml"),
    ]
    assert run_name(*jarvis) == "jarvis-formation_energy-crystalframer-pca"
    assert run_name("--config", str(CONF / "model" / "crystalframer-lightweight.yaml")) == (
        "mp-e_form-crystalframer-lightweight"
    )
    assert run_name("--config", str(CONF / "debug" / "tiny_model.yaml")) == "mp-e_form-crystalframer-1x16"
    assert run_name(*custom, "--tracking.run_name=mine") == "mine"  # a given name wins


class Seen(Callback):
    """Records what the trainer saw while it fitted."""

    def on_fit_start(self, trainer, pl_module):
        self.threads = torch.get_num_threads()
        self.limit_train_batches = trainer.limit_train_batches

    def on_train_end(self, trainer, pl_module):
        self.global_step = trainer.global_step


def test_threads_and_integer_batch_limits_are_applied_and_recorded(workdir, capsys):
    before = torch.get_num_threads()
    threads = 1 if before != 1 else 2
    seen = Seen()
    args = [*DEFAULT, *STANDINS, f"--threads={threads}", "--trainer.max_epochs=2", "--trainer.limit_train_batches=1"]
    main([*args, "--tracking.run_name=t"], trainer_defaults={"callbacks": [seen]})  # LightningCLI's own arguments
    assert seen.threads == threads and torch.get_num_threads() == before  # applied for the run, then restored
    info = json.loads((workdir / "runs" / "t" / "version_0" / "run.json").read_text())
    assert info["threads"] == threads
    assert seen.limit_train_batches == 1 and seen.global_step == 2  # one batch per epoch, not 100% of them
    assert capsys.readouterr().err.splitlines()[-1].startswith("framer: finished in ")


def test_integer_batch_counts_in_config_files_are_batches(workdir):
    """conf/debug/overfit.yaml's ``overfit_batches: 1`` is one batch (jsonargparse alone reads it as 1.0: all)."""
    (workdir / "limits.yaml").write_text("trainer:\n  limit_val_batches: 2\n  limit_test_batches: 0.5\n")
    args = [*DEFAULT[1:], *STANDINS, "--trainer.max_epochs=1", "--tracking.mlflow=false"]
    cli = FramerCLI(args=[*args, "--config", str(CONF / "debug" / "overfit.yaml")], run=False)
    assert cli.trainer.overfit_batches == 1 and isinstance(cli.trainer.overfit_batches, int)
    cli = FramerCLI(args=[*args, "--config", "limits.yaml"], run=False)
    assert cli.trainer.limit_val_batches == 2 and cli.trainer.limit_test_batches == 0.5


NOISE = ("exists and is not empty", "LeafSpec", "litlogger", "`Trainer(limit_test_batches=1.0)` was configured")


def test_a_fit_and_its_test_print_no_noise(workdir, capfd, recwarn, caplog):
    """No known noise, and the devices are named once (by the fit, not again by each final test)."""
    caplog.set_level(logging.INFO)  # Lightning's info lines (pytest takes them from its stream handler)
    main([*DEFAULT, *STANDINS, "--trainer.max_epochs=2", "--trainer.enable_progress_bar=false"])
    out, err = capfd.readouterr()
    said = [str(w.message) for w in recwarn] + (out + err).splitlines() + [r.getMessage() for r in caplog.records]
    assert not [line for line in said if any(noise in line for noise in NOISE)], said
    assert len([line for line in said if line.startswith("GPU available")]) == 1, said
