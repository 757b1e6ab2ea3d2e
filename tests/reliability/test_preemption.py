"""Pre-emption: a ``python -m framer.cli fit`` killed in the middle of an epoch (SIGKILL) or stopped by SIGTERM and
restarted with ``--ckpt_path last`` ends with the same weights, test metrics and learning curve (``metrics.csv``, row
for row) as a run that was never interrupted.

The runs are real subprocesses on CPU with the dropout stand-in network (so the RNG state matters). A stand-in
callback (``PauseAt``) holds the run after a known step until the test has sent its signal, so the signal always
lands mid-epoch. Tolerance: none. On one CPU thread the resumed run takes the same optimizer steps on the same
batches with the same dropout masks, so weights and metrics are compared for exact equality.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from reliability_helpers import STEPS_PER_EPOCH, callback_arg, cli_env, fit_args, load_checkpoint

from framer.errors import EXIT_SIGTERM

EVERY_4 = "--checkpoint.every_n_train_steps=4"
EPOCHS = 3
# The run is held after step 10 (epoch 1, batch 4 of 6); the periodic checkpoint before it is step 8 (epoch 1,
# batch 2). Step 4 is not saved: Lightning defers a step checkpoint until the monitored val/mae exists.
PAUSE = 10
SAVED = 8
RUN = "pre"


def cli(cwd: Path, *extra: str) -> list[str]:
    args = fit_args(RUN, EVERY_4, "--tracking.mlflow=false", *extra, epochs=EPOCHS)
    return [sys.executable, "-m", "framer.cli", *args]


def run_dir(cwd: Path) -> Path:
    return cwd / "runs" / RUN / "version_0"


def finish(cmd: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def start_paused(cwd: Path, env: dict, step: int = PAUSE) -> tuple[subprocess.Popen, Path]:
    """Start a run that pauses after optimizer step ``step``; return it once it is paused there."""
    marker = cwd / "paused"
    pause = callback_arg("reliability_standins.PauseAt", step=step, marker=str(marker))
    log = (cwd / "paused-run.log").open("w")
    proc = subprocess.Popen(cli(cwd, pause), cwd=cwd, env=env, stdout=log, stderr=log, text=True)
    log.close()
    deadline = time.monotonic() + 300
    while not marker.exists():
        if proc.poll() is not None:
            pytest.fail(f"run ended before step {step}: {(cwd / 'paused-run.log').read_text()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("run did not reach the pause")
        time.sleep(0.1)
    return proc, marker


def outcome(cwd: Path) -> dict:
    """What a finished run leaves: test metrics, test predictions and the final weights."""
    directory = run_dir(cwd)
    metrics = json.loads((directory / "results.json").read_text())
    state = load_checkpoint(directory / "checkpoints" / "last.ckpt")
    # a finished run's last.ckpt holds its final step, also between periodic step checkpoints (LastCheckpointAtEnd)
    assert state["global_step"] == metrics["global_step"] == EPOCHS * STEPS_PER_EPOCH
    return {
        "metrics": metrics["metrics"],
        "global_step": metrics["global_step"],
        "predictions": (directory / "predictions.csv").read_text(),
        "curve": (directory / "metrics.csv").read_text(),
        "weights": state["state_dict"],
    }


def assert_same(resumed: dict, reference: dict) -> None:
    assert resumed["global_step"] == reference["global_step"] == EPOCHS * STEPS_PER_EPOCH
    assert set(resumed["metrics"]) == set(reference["metrics"]) >= {"test/mae", "test_best/mae", "best_val/mae"}
    assert resumed["metrics"] == reference["metrics"]  # exact, see the module docstring
    assert resumed["predictions"] == reference["predictions"]
    assert resumed["curve"].splitlines() == reference["curve"].splitlines()  # the history before the resume is kept
    assert resumed["weights"].keys() == reference["weights"].keys()
    for name, value in reference["weights"].items():
        assert torch.equal(resumed["weights"][name], value), name


@pytest.fixture(scope="module")
def reference(tmp_path_factory, ewald_root) -> dict:
    """The uninterrupted run, same seed and arguments."""
    cwd = tmp_path_factory.mktemp("uninterrupted")
    done = finish(cli(cwd), cwd, cli_env(cwd, ewald_root))
    return {**outcome(cwd), "log": done.stdout + done.stderr}


def test_the_last_checkpoint_at_the_end_is_saved_without_lightnings_weights_only_notice(reference):
    # step 18's last.ckpt is written by LastCheckpointAtEnd (the periodic one was step 16): a full checkpoint, said so
    assert reference["global_step"] % 4 and "`weights_only` was not set" not in reference["log"]


def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path, ewald_root, reference):
    env = cli_env(tmp_path, ewald_root)
    proc, _ = start_paused(tmp_path, env)
    last = run_dir(tmp_path) / "checkpoints" / "last.ckpt"
    assert load_checkpoint(last)["global_step"] == SAVED and SAVED % STEPS_PER_EPOCH  # mid-epoch
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert not (run_dir(tmp_path) / "results.json").exists()

    done = finish(cli(tmp_path, "--ckpt_path=last"), tmp_path, env)
    assert "Restoring states from the checkpoint" in done.stderr + done.stdout
    assert sorted(p.name for p in (tmp_path / "runs" / RUN).iterdir()) == ["version_0"]  # resumed in place
    assert_same(outcome(tmp_path), reference)


def test_sigterm_saves_a_checkpoint_at_the_step_reached_and_resume_matches(tmp_path, ewald_root, reference):
    env = cli_env(tmp_path, ewald_root)
    proc, _ = start_paused(tmp_path, env)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    err = (tmp_path / "paused-run.log").read_text()
    assert proc.returncode == EXIT_SIGTERM, err[-3000:]
    last = run_dir(tmp_path) / "checkpoints" / "last.ckpt"
    assert f"framer: stopped by SIGTERM: saved {last.relative_to(tmp_path)} at global step {PAUSE}" in err
    assert "Traceback" not in err
    checkpoint = load_checkpoint(last)
    assert checkpoint["global_step"] == PAUSE
    assert not (run_dir(tmp_path) / "results.json").exists()  # no test of an interrupted run

    finish(cli(tmp_path, "--ckpt_path=last"), tmp_path, env)
    assert_same(outcome(tmp_path), reference)
