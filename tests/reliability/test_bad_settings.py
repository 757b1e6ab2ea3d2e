"""Settings that used to end in a traceback or a cryptic line: each is now one ``framer: error:`` line naming the
setting (exit code 2), or the non-finite stop (exit code 3), with nothing half-written."""

from __future__ import annotations

import pytest
from reliability_helpers import CONF, callback_arg, fit_args, load_checkpoint
from reliability_standins import SEEN, file_digest
from test_untrusted_files import one_error

import framer.io
from framer.cli import main
from framer.errors import EXIT_NON_FINITE

NETWORK = ["--config", str(CONF / "debug" / "tiny_model.yaml")]  # the real CrystalFramer, small
LR = "--model.init_args.optimizer.init_args.lr"


def test_angle_basis_below_two_is_one_line(workdir, capsys):
    line = one_error(fit_args("bad", *NETWORK, "--model.init_args.model.init_args.angle_basis=0", model=[]), capsys)
    assert "invalid configuration: angle_basis must be at least 2" in line and "got 0" in line
    assert not (workdir / "runs").exists()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("nan", "Parser key \"lr\": invalid value 'nan' (expected float or torch.Tensor)"),  # not a YAML float
        (".nan", "the optimizer or learning-rate scheduler rejected its settings: Invalid learning rate: nan"),
        ("-1", "the optimizer or learning-rate scheduler rejected its settings: Invalid learning rate: -1.0"),
    ],
)
def test_invalid_learning_rates_are_one_line(workdir, capsys, value, expected):
    line = one_error(fit_args("lr", "--tracking.mlflow=false", f"{LR}={value}"), capsys)
    assert expected in line
    assert not (workdir / "runs").exists()


def test_an_overflowing_optimizer_step_is_the_non_finite_stop(workdir, capsys):
    with pytest.raises(SystemExit) as info:
        main(fit_args("big", "--tracking.mlflow=false", f"{LR}=1e38"))
    err = capsys.readouterr().err
    assert info.value.code == EXIT_NON_FINITE, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("framer:")]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    assert "the optimizer step at global step 0 overflowed" in lines[0]
    assert "learning rate 1e+38 is too large" in lines[0]


def test_swa_epochs_above_max_epochs_is_refused(workdir, capsys):
    line = one_error(fit_args("swa", "--tracking.mlflow=false", "--model.init_args.swa_epochs=5", epochs=3), capsys)
    assert "swa_epochs (5) is larger than trainer.max_epochs (3)" in line
    assert not (workdir / "runs").exists()  # refused before the run directory is made


def test_a_full_disk_while_saving_a_checkpoint_is_one_line_and_keeps_the_previous_one(workdir, capsys, monkeypatch):
    monkeypatch.setattr(framer.io, "open", open, raising=False)  # the stand-in replaces it; restored after
    SEEN.clear()
    full = callback_arg("reliability_standins.DiskFullDuringSave", step=12)
    line = one_error(fit_args("full", "--tracking.mlflow=false", "--checkpoint.every_n_train_steps=4", full), capsys)
    checkpoints = workdir / "runs" / "full" / "version_0" / "checkpoints"
    assert f"could not write checkpoint {checkpoints.relative_to(workdir)}/" in line
    assert "No space left on device" in line
    assert "the previous checkpoint file is intact" in line
    assert file_digest(checkpoints / "last.ckpt") == SEEN["last_ckpt_digest"] is not None  # untouched
    assert load_checkpoint(checkpoints / "last.ckpt")["global_step"] == 8
    assert not list(checkpoints.glob(".*.tmp"))  # the cut-short file is removed
