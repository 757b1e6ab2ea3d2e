"""framer.launch: the CLI arguments a RunSpec composes, and how in-process and subprocess runs end (exit codes,
the CLI's message, timeouts, SIGTERM)."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest
import yaml

import framer.cli
from framer.launch import (
    EXIT_SIGTERM,
    RunSpec,
    quiet_overrides,
    run_inprocess,
    run_subprocess,
)

REPO = Path(__file__).resolve().parents[2]
BAD_OPTION = {"trainer.max_epochz": 3}


@pytest.fixture
def elsewhere(tmp_path, monkeypatch) -> Path:
    """Run from a directory that is not the repository (nothing a run might write lands in the checkout)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FRAMER_DEBUG", raising=False)
    return tmp_path


def test_values_are_written_as_the_cli_reads_them():
    args = RunSpec([], {"a.b": 1, "c": [1, 2], "d": {"k": "v"}, "e": "text", "f": False, "g": 1e-4}, None).args()
    assert args == ["--a.b=1", "--c=[1, 2]", "--d={k: v}", "--e=text", "--f=false", "--g=0.0001"]


def test_quiet_overrides_drop_progress_bars(tmp_path):
    base = tmp_path / "base.yaml"
    callbacks = [{"class_path": "lightning.pytorch.callbacks.TQDMProgressBar"}, {"class_path": "x.Other"}]
    base.write_text(yaml.safe_dump({"trainer": {"callbacks": callbacks}}))
    later = tmp_path / "later.yaml"
    later.write_text(yaml.safe_dump({"trainer": {"max_epochs": 1}}))
    quiet = quiet_overrides([str(base), str(later)])  # the later config keeps the earlier one's callbacks
    assert quiet["trainer.callbacks"] == [{"class_path": "x.Other"}]
    assert quiet["trainer.enable_progress_bar"] is False


def test_spec_args_compose_configs_overrides_quiet_and_resume(elsewhere):
    overrides = {"trainer.max_epochs": 2, "tracking.tags": {"seed": "1"}, "trainer.enable_model_summary": True}
    spec = RunSpec(["conf/default.yaml", "conf/data/ewald.yaml"], overrides, resume=True, quiet=True)
    args = spec.args()
    configs = [str(REPO / "conf" / "default.yaml"), str(REPO / "conf" / "data" / "ewald.yaml")]
    assert args[:5] == ["fit", "--config", configs[0], "--config", configs[1]]  # found from another directory
    assert "--trainer.callbacks=[]" in args  # conf/default.yaml's progress bar is dropped
    assert "--trainer.enable_progress_bar=false" in args
    assert "--trainer.enable_model_summary=true" in args and "--trainer.enable_model_summary=false" not in args
    assert "--trainer.max_epochs=2" in args and "--tracking.tags={seed: '1'}" in args
    assert args[-1] == "--ckpt_path=last"
    assert RunSpec(["conf/default.yaml"], subcommand=None).args() == ["--config", configs[0]]


def test_inprocess_user_error_is_exit_2_with_the_clis_message(elsewhere):
    outcome = run_inprocess(RunSpec(["conf/default.yaml"], BAD_OPTION))
    assert outcome.code == 2 and not outcome.ok and not outcome.interrupted
    first = outcome.message.splitlines()[0]
    assert first == (
        "framer.cli exited with 2: error: unrecognized arguments: --trainer.max_epochz=3; "
        "did you mean 'trainer.max_epochs'?"
    )


def _preempted(*args, **kwargs):
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    raise SIGTERMException()  # what Lightning raises in fit after SIGTERM: a SystemExit whose code is None


def _crashed(*args, **kwargs):
    raise RuntimeError("out of memory (pretend)")


def _refused(*args, **kwargs):
    raise framer.cli.UserError("invalid configuration: pretend")


@pytest.mark.parametrize("callbacks", [(), ("a callback",)], ids=["main", "with callbacks"])
@pytest.mark.parametrize(("cli", "code"), [(_preempted, EXIT_SIGTERM), (_crashed, 1), (_refused, 2)])
def test_inprocess_sigterm_is_an_interruption_and_a_crash_an_outcome(elsewhere, monkeypatch, cli, code, callbacks):
    monkeypatch.setattr(framer.cli, "FramerCLI", cli)
    outcome = run_inprocess(RunSpec(["conf/default.yaml"]), callbacks=callbacks)
    assert outcome.code == code and not outcome.ok
    assert outcome.interrupted == (code == EXIT_SIGTERM)
    if code == 1:
        assert outcome.message.splitlines()[0].endswith("RuntimeError: out of memory (pretend)")
    if code == 2:
        assert outcome.message.splitlines()[0] == "framer.cli exited with 2: error: invalid configuration: pretend"


def test_inprocess_callbacks_reach_the_trainer(elsewhere, monkeypatch):
    """Live callbacks (e.g. Optuna's pruning callback, holding its trial) join the configs' through LightningCLI's
    trainer_defaults."""
    built = {}
    monkeypatch.setattr(framer.cli, "FramerCLI", lambda **kwargs: built.update(kwargs))
    callback = object()
    assert run_inprocess(RunSpec(["conf/default.yaml"]), callbacks=[callback]).ok
    assert built["trainer_defaults"] == {"callbacks": [callback]}
    assert built["args"][:2] == ["fit", "--config"]


def test_subprocess_user_error_is_exit_2_with_the_logs_end(elsewhere):
    log = elsewhere / "run" / "launch.log"
    outcome = run_subprocess(RunSpec(["conf/default.yaml"], BAD_OPTION), log)
    assert outcome.code == 2 and not outcome.interrupted
    assert "unrecognized arguments: --trainer.max_epochz=3" in outcome.message.splitlines()[0]
    assert "-m framer.cli fit --config" in log.read_text()  # the command, then its output


def test_subprocess_timeout_stops_the_run_and_is_no_interruption(elsewhere):
    outcome = run_subprocess(RunSpec(["conf/default.yaml"]), elsewhere / "launch.log", timeout=0.5)
    assert outcome.timed_out and not outcome.ok and not outcome.interrupted
    assert outcome.code == EXIT_SIGTERM  # stopped with SIGTERM (it had no time to save anything)
    assert "(timeout)" in outcome.message.splitlines()[0]


def test_sigterm_to_the_launcher_is_passed_on_to_the_run(elsewhere):
    """A pre-empted job's SIGTERM reaching the launcher goes to the run, and the outcome says interrupted."""
    late = []  # a signal arriving after the run ended would land here instead of ending the test process
    previous = signal.signal(signal.SIGTERM, lambda *_: late.append(True))
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM))
    try:
        timer.start()
        outcome = run_subprocess(RunSpec(["conf/default.yaml"]), elsewhere / "launch.log", timeout=120)
        timer.join()
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert not late
    assert outcome.code == EXIT_SIGTERM and outcome.interrupted and not outcome.timed_out


def test_subprocess_poll_is_called_while_the_run_lasts_and_can_stop_it(elsewhere):
    """The poll hook (a DDP trial's driver reading its progress) runs every POLL_INTERVAL; True stops the run."""
    calls = []
    outcome = run_subprocess(
        RunSpec(["conf/default.yaml"]),
        elsewhere / "launch.log",
        timeout=120,
        poll=lambda: len(calls.append(1) or calls) >= 2,
    )
    assert len(calls) == 2
    assert outcome.stopped and not outcome.timed_out and not outcome.interrupted and not outcome.ok
    assert outcome.code == EXIT_SIGTERM and "(poll)" in outcome.message.splitlines()[0]
