"""A NaN or infinite loss or gradient stops training before the optimizer step, with one line naming the step;
the last good checkpoint is kept, and no step is skipped silently."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from reliability_helpers import STEPS_PER_EPOCH, callback_arg, fit_args, load_checkpoint
from reliability_standins import SEEN, file_digest

from framer.callbacks import FiniteGuard, NonFiniteLossError
from framer.cli import main
from framer.errors import EXIT_NON_FINITE

# a checkpoint every 4 steps; the failure comes in the batch after step 8 (epoch 1, batch 2)
EVERY_4 = "--checkpoint.every_n_train_steps=4"
STEP = 8


def run_main(args, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as info:
        main(args)
    return info.value.code, capsys.readouterr().err


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_non_finite_loss_stops_before_the_step_and_keeps_the_last_checkpoint(workdir, capsys, value):
    SEEN.clear()
    args = fit_args(
        "nan",
        EVERY_4,
        "--tracking.mlflow=false",
        callback_arg("reliability_standins.PoisonTarget", step=STEP, value=value),
    )
    code, err = run_main(args, capsys)
    assert code == EXIT_NON_FINITE
    lines = [line for line in err.splitlines() if line.startswith("framer:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    message = lines[0]
    assert f"training loss is {value}" in message
    assert f"at global step {STEP} (epoch {STEP // STEPS_PER_EPOCH}, batch {STEP % STEPS_PER_EPOCH}" in message
    assert SEEN["poisoned_ids"][0] in message  # names the crystals of the batch
    last = workdir / "runs" / "nan" / "version_0" / "checkpoints" / "last.ckpt"
    assert f"last good checkpoint is {last}" in message
    # the last good checkpoint is neither overwritten nor advanced, and holds finite weights
    assert file_digest(last) == SEEN["last_ckpt_digest"] is not None
    checkpoint = load_checkpoint(last)
    assert checkpoint["global_step"] == STEP
    assert all(torch.isfinite(t).all() for t in checkpoint["state_dict"].values() if t.is_floating_point())
    steps = [int(p.stem.split("step")[-1]) for p in last.parent.glob("best-*.ckpt")]
    assert steps and max(steps) <= STEP
    assert not (last.parent.parent / "results.json").exists()  # no test results of a broken run


def test_non_finite_gradient_stops_before_the_weights_change(workdir, capsys):
    SEEN.clear()
    poison = callback_arg("reliability_standins.PoisonGradient", step=5, parameter="model.mlp.0.weight")
    args = fit_args("grad", "--tracking.mlflow=false", "--trainer.gradient_clip_val=null", poison)
    # the module is gone after main() exits: watch its weights through a hook on the optimizer step
    code, err = run_main(args, capsys)
    assert code == EXIT_NON_FINITE
    assert "the gradient of model.mlp.0.weight is not finite at global step 5" in err
    assert err.count("\n") == 1, err


def test_guard_refuses_to_write_a_checkpoint_with_non_finite_weights():
    guard = FiniteGuard()
    trainer = SimpleNamespace(global_step=12, checkpoint_callback=None)
    good = {"state_dict": {"w": torch.ones(3), "n": torch.tensor(3)}}
    guard.on_save_checkpoint(trainer, None, good)
    bad = {"state_dict": {"w": torch.tensor([1.0, math.nan]), "n": torch.tensor(3)}}
    with pytest.raises(NonFiniteLossError, match="refusing to save a checkpoint at global step 12: w is not finite"):
        guard.on_save_checkpoint(trainer, None, bad)
