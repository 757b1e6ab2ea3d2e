"""The end of a CLI fit: figures in the run directory and MLflow, finished epochs after a time limit, runs bounded by
``max_time`` with the schedule and the SWA window given as fractions of the run (issue 17, items 3 and 7)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from lightning.pytorch.callbacks import Callback

from framer.cli import FramerCLI

REPO = Path(__file__).resolve().parents[2]
TINY = [
    "fit",
    "--config",
    str(REPO / "conf" / "default.yaml"),
    "--model.init_args.model=training_standins.TinyModel",
    "--model.init_args.model.init_args.hidden=8",
    "--data=training_standins.TinyDataModule",
    "--data.init_args.num_crystals=40",  # 24 training crystals: 3 steps per epoch
    "--data.init_args.batch_size=8",
    "--trainer.accelerator=cpu",
    "--trainer.enable_progress_bar=false",
]


class SlowSteps(Callback):
    """Sleep ``seconds`` after every training batch, and ``stall`` seconds after the first batch of epoch
    ``stall_epoch``: a run bounded by ``max_time`` then stops where the test wants."""

    def __init__(self, seconds: float = 0.0, stall: float = 0.0, stall_epoch: int = -1) -> None:
        self.seconds, self.stall, self.stall_epoch = seconds, stall, stall_epoch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        time.sleep(self.seconds + (self.stall if (trainer.current_epoch, batch_idx) == (self.stall_epoch, 0) else 0))


@pytest.fixture
def slow_steps_allowed(monkeypatch):
    """Let configs name :class:`SlowSteps` (this module) besides the stand-ins."""
    monkeypatch.setenv("FRAMER_ALLOWED_MODULES", f"training_standins,reliability_standins,{__name__}")


def slow(**init_args) -> list[str]:
    return ["--trainer.callbacks+=" + json.dumps({"class_path": f"{__name__}.SlowSteps", "init_args": init_args})]


def results(workdir: Path, name: str) -> dict:
    return json.loads((workdir / "runs" / name / "version_0" / "results.json").read_text())


def test_a_time_limited_run_reports_finished_epochs_and_the_global_step(workdir, slow_steps_allowed, capsys):
    # epoch 1 stalls after its first batch past the 1 s limit: training stops 1 step into epoch 1
    args = [*TINY, *slow(stall=1.2, stall_epoch=1), "--trainer.max_time=00:00:00:01", "--tracking.run_name=t"]
    args.append("--tracking.mlflow=false")
    with pytest.warns(UserWarning, match="SWA never ran: training stopped at epoch 2, global step 4, before its"):
        FramerCLI(args=args)
    summary = results(workdir, "t")
    assert summary["global_step"] == 4 and summary["epochs"] == 1  # epoch 1 had begun, not finished
    assert summary["test_weights"] == "raw" and summary["swa_steps"] == 0
    assert "tested weights: test/mae: the raw weights" in capsys.readouterr().out


def test_a_fraction_schedule_and_swa_window_work_in_a_run_bounded_by_max_time(workdir, slow_steps_allowed, recwarn):
    # about 30 steps of 0.03 s in the 1 s limit (fewer under load); max_epochs stays the default 500
    fractions = ["--model.init_args.swa_epochs=0.5", "--model.init_args.lr_scheduler.init_args.decay_steps=0.1"]
    args = [*TINY, *slow(seconds=0.03), *fractions, "--trainer.max_time=00:00:00:01", "--tracking.mlflow=false"]
    cli = FramerCLI(args=[*args, "--tracking.run_name=f"])
    summary = results(workdir, "f")
    assert summary["test_weights"] == "swa" and 0 < summary["swa_steps"] < summary["global_step"]
    assert not [w for w in recwarn if "SWA never ran" in str(w.message)]
    # averaging began about halfway through the time: the rate froze at lr·sqrt(0.1 / (0.1 + ~0.5))
    lr = cli.trainer.optimizers[0].param_groups[0]["lr"]
    assert 0.3 * 5e-4 < lr < 0.6 * 5e-4


def test_every_finished_fit_logs_its_figures_to_the_run_directory_and_mlflow(workdir):
    FramerCLI(args=[*TINY, "--trainer.max_epochs=2", "--model.init_args.swa_epochs=1", "--tracking.run_name=pics"])
    run = workdir / "runs" / "pics" / "version_0"
    names = {"parity.png", "errors.png", "learning_curves.png"}
    assert {p.name for p in (run / "figures").iterdir()} == names
    from mlflow.tracking import MlflowClient

    client = MlflowClient()  # the workdir fixture's sqlite:/// database
    run_id = json.loads((run / "run.json").read_text())["mlflow_run_id"]
    assert {a.path for a in client.list_artifacts(run_id, "figures")} == {f"figures/{n}" for n in names}
