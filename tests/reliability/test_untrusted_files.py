"""Untrusted files through the command line: a moduli pickle or a checkpoint that would run code when unpickled is
refused with one ``framer: error:`` line naming the file, and the code never runs; a truncated checkpoint too.

(``tests/data/test_data_sources.py`` covers the restricted unpickler itself; these go through ``framer.cli``.)
"""

from __future__ import annotations

import os
import pickle

import pytest
import torch
from reliability_helpers import CONF, QUIET, STANDIN, fit_args

from framer.cli import main
from framer.errors import EXIT_USER_ERROR
from tests.data.fakes import write_moduli_pickles


class RunsCode:
    """Unpickling this runs ``command`` in a shell (what a malicious file would do)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def one_error(args: list[str], capsys) -> str:
    """Run the CLI, expect exit code 2 and exactly one ``framer: error:`` line (no traceback); return it."""
    with pytest.raises(SystemExit) as info:
        main(args)
    err = capsys.readouterr().err
    assert info.value.code == EXIT_USER_ERROR, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("framer: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    return lines[0]


def test_moduli_pickle_that_runs_code_is_refused_naming_the_file(workdir, tmp_path, monkeypatch, capsys):
    data = tmp_path / "moduli-data"
    paths = write_moduli_pickles(data / "raw", "bulk", sizes=(12, 4, 4))
    marker = tmp_path / "pwned"
    items = pickle.loads(paths["val"].read_bytes())
    items[1]["bulk modulus"] = RunsCode(f"touch {marker}")
    paths["val"].write_bytes(pickle.dumps(items, protocol=4))
    monkeypatch.setenv("FRAMER_DATA_DIR", str(data))

    args = ["fit", "--config", str(CONF / "default.yaml"), "--config", str(CONF / "trainer" / "cpu.yaml"), *STANDIN]
    args += [*QUIET, "--trainer.max_epochs=1", "--model.init_args.swa_epochs=1", "--tracking.mlflow=false"]
    args += ["--data.init_args.target=bulk_modulus", "--data.init_args.batch_size=4"]
    line = one_error(args, capsys)
    assert str(paths["val"]) in line and "could run code" in line and "posix.system" in line
    assert not marker.exists()


@pytest.fixture
def evil_checkpoint(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    state = {"model.embed.weight": torch.zeros(99, 16)}
    torch.save({"state_dict": state, "global_step": 0, "hyper_parameters": RunsCode(f"touch {marker}")}, path)
    return path, marker


@pytest.mark.parametrize("subcommand", ["fit", "test"])
def test_checkpoint_carrying_code_is_refused(workdir, capsys, evil_checkpoint, subcommand):
    path, marker = evil_checkpoint
    args = fit_args("evil", "--tracking.mlflow=false", epochs=1)
    args[0] = subcommand
    line = one_error([*args, f"--ckpt_path={path}"], capsys)
    assert f"checkpoint {path} was not loaded" in line and "(posix.system)" in line and "could run code" in line
    assert not marker.exists()


def test_last_checkpoint_carrying_code_is_refused_on_resume(workdir, capsys, evil_checkpoint):
    path, marker = evil_checkpoint
    last = workdir / "runs" / "evil" / "version_0" / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    last.write_bytes(path.read_bytes())
    line = one_error([*fit_args("evil", "--tracking.mlflow=false"), "--ckpt_path=last"], capsys)
    assert f"checkpoint {last.relative_to(workdir)} was not loaded" in line and "(posix.system)" in line
    assert not marker.exists()


def test_truncated_checkpoint_is_one_line(workdir, capsys):
    main(fit_args("short", "--tracking.mlflow=false", "--test_after_fit=false", epochs=1))
    capsys.readouterr()
    good = workdir / "runs" / "short" / "version_0" / "checkpoints" / "last.ckpt"
    torch.load(good, weights_only=True)  # a real checkpoint of this run
    broken = workdir / "broken.ckpt"
    data = good.read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    line = one_error(["test", *fit_args("short", "--tracking.mlflow=false")[1:], f"--ckpt_path={broken}"], capsys)
    assert f"checkpoint {broken} is truncated or corrupt" in line


def test_a_checkpoint_in_torchs_old_format_carrying_code_is_refused(workdir, capsys, tmp_path):
    """torch's scan of a checkpoint's imports reads zip checkpoints only; the old format is refused all the same."""
    marker = tmp_path / "pwned"
    path = tmp_path / "old-format.ckpt"
    payload = {"state_dict": {}, "global_step": 0, "hyper_parameters": RunsCode(f"touch {marker}")}
    torch.save(payload, path, _use_new_zipfile_serialization=False)
    line = one_error(["test", *fit_args("old", "--tracking.mlflow=false")[1:], f"--ckpt_path={path}"], capsys)
    assert f"checkpoint {path} was not loaded" in line and "could run code" in line
    assert not marker.exists()
