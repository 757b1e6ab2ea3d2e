"""Atomic writes: a process killed while writing a cache or a checkpoint leaves the previous file (or none), and a
truncated or corrupted cache is detected and rebuilt with a warning, never used.

The kills are real: the writing process SIGKILLs itself after a given number of bytes went into the file (see
``reliability_standins.kill_while_writing``), so no clean-up code of the writer runs.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from reliability_helpers import STEPS_PER_EPOCH, callback_arg, cli_env, copy_data, fit_args, load_checkpoint
from reliability_standins import file_digest

from framer.data import EwaldDataModule
from framer.data.cache import read_cache, read_header

EWALD = {"num_crystals": 32, "max_atoms": 6, "batch_size": 4, "build_workers": 0}


def ewald(root: Path, **kwargs) -> EwaldDataModule:
    return EwaldDataModule(**EWALD, data_dir=str(root), **kwargs)


BUILD_AND_DIE = """
import sys
import framer.io
from reliability_standins import kill_while_writing
from framer.data import EwaldDataModule

kill_while_writing(framer.io, ".cache.", int(sys.argv[2]))
EwaldDataModule(num_crystals=32, max_atoms=6, batch_size=4, build_workers=0, data_dir=sys.argv[1],
                rebuild_cache=True).prepare_data()
"""


def build_and_die(root: Path, tmp_path: Path, limit: int) -> None:
    cmd = [sys.executable, "-c", BUILD_AND_DIE, str(root), str(limit)]
    done = subprocess.run(cmd, env=cli_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]


@pytest.mark.parametrize("previous", [True, False], ids=["over-a-valid-cache", "first-build"])
def test_kill_while_writing_the_cache_leaves_the_previous_file_or_none(tmp_path, ewald_root, previous, caplog):
    root = copy_data(ewald_root, tmp_path / "data") if previous else tmp_path / "data"
    path = ewald(root).cache_path()
    before = file_digest(path)
    assert (before is not None) == previous
    size = path.stat().st_size if previous else 20000
    build_and_die(root, tmp_path, limit=size // 2)  # dies half-way through the payload

    assert file_digest(path) == before  # untouched, or still absent
    partial = list(path.parent.glob(f".{path.name}.*.tmp"))
    assert len(partial) == 1 and 0 < partial[0].stat().st_size < size  # the write really was cut short
    caplog.set_level(logging.INFO, logger="framer.data")
    dm = ewald(root)
    dm.prepare_data()
    assert dm.cache_status == ("hit" if previous else "miss")
    read_cache(path)  # valid, checksum verified
    if not previous:
        assert file_digest(path) == file_digest(ewald(ewald_root).cache_path())


def test_kill_while_saving_a_checkpoint_keeps_the_previous_one_and_resume_works(tmp_path, ewald_root):
    env = cli_env(tmp_path, ewald_root)
    args = fit_args("ckpt", "--checkpoint.every_n_train_steps=4", "--tracking.mlflow=false")
    kill = callback_arg("reliability_standins.KillDuringSave", step=12)
    cmd = [sys.executable, "-m", "framer.cli", *args, kill]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]

    checkpoints = tmp_path / "runs" / "ckpt" / "version_0" / "checkpoints"
    partial = list(checkpoints.glob(".*.ckpt.*.tmp"))
    assert len(partial) == 1  # the cut-short write
    saved = sorted(checkpoints.glob("*.ckpt"))
    assert "last.ckpt" in [p.name for p in saved]
    for path in saved:  # every visible checkpoint is complete: the ones of step 8
        assert load_checkpoint(path)["global_step"] == 8

    resumed = subprocess.run(
        [sys.executable, "-m", "framer.cli", *args, "--ckpt_path=last"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert load_checkpoint(checkpoints / "last.ckpt")["global_step"] == 3 * STEPS_PER_EPOCH  # the final step


def _truncate(data: bytearray, payload_start: int) -> bytearray:
    return data[: len(data) - 1000]


def _flip_header(data: bytearray, payload_start: int) -> bytearray:
    data[payload_start // 2] ^= 0x04  # inside the JSON header
    return data


def _flip_payload(data: bytearray, payload_start: int) -> bytearray:
    data[payload_start + (len(data) - payload_start) // 3] ^= 0x01  # inside the arrays
    return data


@pytest.mark.parametrize("damage", [_truncate, _flip_header, _flip_payload], ids=["truncated", "header", "payload"])
def test_damaged_cache_is_rebuilt_with_a_warning_never_used(tmp_path, ewald_root, damage, caplog):
    root = copy_data(ewald_root, tmp_path / "data")
    good = ewald(ewald_root)
    good.setup()
    path = ewald(root).cache_path()
    original = path.read_bytes()
    _, payload_start = read_header(path)
    path.write_bytes(bytes(damage(bytearray(original), payload_start)))

    caplog.set_level(logging.INFO, logger="framer.data")
    dm = ewald(root)
    dm.prepare_data()
    assert dm.cache_status == "corrupt"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "corrupt cache" in r.getMessage()]
    assert len(warnings) == 1 and str(path) in warnings[0].getMessage()
    assert path.read_bytes() == original  # rebuilt: the same bytes as the undamaged cache
    for split in ("train", "val", "test"):
        ours, theirs = dm.dataset(split), good.dataset(split)
        assert ours.ids == theirs.ids
        np.testing.assert_array_equal(ours.targets, theirs.targets)
