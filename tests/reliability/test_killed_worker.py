"""A ``python -m framer.tune`` worker killed (SIGKILL) in the middle of a trial leaves a usable study: rerunning the
command marks the trial FAILED (dead-trial recovery), runs its parameters again and finishes the remaining budget.
A worker stopped by SIGTERM (pre-emption) in the middle of a trial exits with 143, leaving the trial to requeue.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import optuna
import pytest
import yaml
from optuna.trial import TrialState
from reliability_helpers import CONF, cli_env

from framer.launch import EXIT_SIGTERM
from framer.tune.runner import TrialBudget, tune
from framer.tune.storage import load_study_from_dir, retry_of

N_TRIALS = 3
LR = "model.init_args.optimizer.init_args.lr"


def write_sweep(tmp_path, marker=None, callbacks=None) -> str:
    """3 trials of the stand-in network on the test-size Ewald data; the 2nd trial pauses after step 3 (or the
    trials get ``callbacks``)."""
    pause = {"class_path": "reliability_standins.PauseAt", "init_args": {"step": 3, "marker": str(marker)}}
    pause["init_args"]["occurrence"] = 2
    sweep = {
        "study": "killed",
        "configs": [str(CONF / "default.yaml"), str(CONF / "data" / "ewald.yaml"), str(CONF / "trainer" / "cpu.yaml")],
        "fixed": {
            "model.init_args.model": {"class_path": "reliability_standins.PooledMLP", "init_args": {"hidden": 16}},
            "model.init_args.swa_epochs": 1,
            "trainer.max_epochs": 2,
            "trainer.log_every_n_steps": 1,
            "trainer.callbacks": [pause] if callbacks is None else callbacks,
            "data.init_args.num_crystals": 32,
            "data.init_args.max_atoms": 6,
            "data.init_args.batch_size": 4,
            "data.init_args.test_batch_size": 8,
            "data.init_args.build_workers": 0,
        },
        "search_space": {LR: {"type": "float", "low": 1.0e-4, "high": 3.0e-3, "log": True}},
        "metric": "val/mae",
        "direction": "minimize",
        "n_trials": N_TRIALS,
        "sampler": {"type": "random", "seed": 0},
        "pruner": {"type": "none"},
    }
    path = tmp_path / "killed.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return str(path)


def test_killed_worker_leaves_a_study_that_resumes_and_finishes_its_budget(tmp_path, ewald_root):
    marker = tmp_path / "paused"
    study_dir = tmp_path / "study"
    cmd = [sys.executable, "-m", "framer.tune", "--sweep", write_sweep(tmp_path, marker)]
    cmd += ["--study-dir", str(study_dir), "--no-figures"]
    env = cli_env(tmp_path, ewald_root)
    with (tmp_path / "worker.log").open("w") as log:
        worker = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=log)
    deadline = time.monotonic() + 300
    while not marker.exists():
        if worker.poll() is not None or time.monotonic() > deadline:
            worker.kill()
            pytest.fail(f"the worker never paused: {(tmp_path / 'worker.log').read_text()[-3000:]}")
        time.sleep(0.1)
    states = [t.state for t in load_study_from_dir(study_dir).trials]
    assert states == [TrialState.COMPLETE, TrialState.RUNNING]  # killed in the middle of trial 1
    worker.send_signal(signal.SIGKILL)
    assert worker.wait(timeout=60) == -signal.SIGKILL

    again = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "requeued trials [1] of workers that died" in again.stderr

    study = load_study_from_dir(study_dir)
    trials = study.trials
    killed = trials[1]
    assert killed.state == TrialState.FAIL
    retry = [t for t in trials if retry_of(t) == 1]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE
    assert retry[0].params[LR] == killed.params[LR]  # the killed trial's parameters ran again
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == N_TRIALS  # the whole budget, no more
    assert TrialBudget(N_TRIALS).used(study) == N_TRIALS
    assert study.best_trial.state == TrialState.COMPLETE and (study_dir / "best.yaml").is_file()

    from mlflow.tracking import MlflowClient

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("killed").experiment_id])
    status = {r.info.run_name: r.info.status for r in runs if r.data.tags.get("framer.role") == "trial"}
    assert status.pop("trial_0001") == "FAILED"  # not RUNNING forever
    assert sorted(status.values()) == ["FINISHED"] * N_TRIALS


def test_sigterm_stops_an_inprocess_worker_with_143_and_leaves_the_trial_to_requeue(workdir):
    """Lightning's SIGTERMException is a SystemExit whose code is None: it used to end the worker with exit 0."""
    import signal as signals

    sigterm = {"class_path": "reliability_standins.SignalAt", "init_args": {"step": 1}}
    previous = signals.signal(signals.SIGTERM, lambda *_: None)  # Lightning chains it; never the default (exit)
    try:
        with pytest.raises(SystemExit) as stopped:
            tune(write_sweep(workdir, callbacks=[sigterm]), study_dir=workdir / "study", mlflow=False, figures=False)
    finally:
        signals.signal(signals.SIGTERM, previous)
    assert stopped.value.code == EXIT_SIGTERM
    assert [t.state for t in load_study_from_dir(workdir / "study").trials] == [TrialState.RUNNING]
    assert (workdir / "study" / "trials" / "trial_0000" / "version_0" / "checkpoints" / "last.ckpt").is_file()


def test_journal_line_cut_short_by_a_kill_is_dropped_and_the_study_stays_readable(tmp_path):
    from framer.tune.storage import open_storage

    journal = tmp_path / "journal.log"
    study = optuna.create_study(study_name="s", storage=open_storage(f"journal:{journal}"))
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    complete = journal.read_bytes()
    with journal.open("ab") as handle:  # what a worker killed in the middle of an append leaves behind
        handle.write(b'{"op_code": 4, "worker_id": "dead", "study_id": 0, "datetime_st')
    with pytest.warns(UserWarning, match="dropped a partial last line"):
        storage = open_storage(f"journal:{journal}")
    assert journal.read_bytes() == complete
    study = optuna.load_study(study_name="s", storage=storage)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)  # appends after the repaired end
    reread = optuna.load_study(study_name="s", storage=open_storage(f"journal:{journal}"))
    assert [t.state for t in reread.trials] == [TrialState.COMPLETE] * 3
