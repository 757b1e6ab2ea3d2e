"""The trial budget shared by workers and recovery of trials whose worker died (no training)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import optuna
import pytest
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from framer.tune.runner import TrialBudget
from framer.tune.storage import WORKER_ATTR, open_storage, recover_dead_trials, requeue, retry_of

X = {"x": optuna.distributions.FloatDistribution(0, 1)}


def journal_study(tmp_path, name="s", sampler=None):
    storage = open_storage(f"journal:{tmp_path / 'journal.log'}")
    return optuna.create_study(study_name=name, storage=storage, sampler=sampler, load_if_exists=True)


def dead_pid() -> int:
    """The pid of a process that has exited."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def run_by(trial, pid: int) -> None:
    trial.set_user_attr(WORKER_ATTR, f"{socket.gethostname()}:{pid}")


def test_budget_counts_every_worker_and_stops(tmp_path):
    budget = TrialBudget(4)
    study_a, study_b = journal_study(tmp_path), journal_study(tmp_path)  # two "workers" on one journal
    study_a.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    assert budget.remaining(study_b) == 2
    study_b.optimize(lambda t: t.suggest_float("x", 0, 1), callbacks=[budget], n_trials=10)
    assert len(study_a.get_trials(states=(TrialState.COMPLETE,))) == 4
    assert budget.remaining(study_a) == 0


def test_failed_trials_count_but_requeued_ones_do_not(tmp_path):
    study = journal_study(tmp_path)
    budget = TrialBudget(3)

    def fail(trial):
        trial.suggest_float("x", 0, 1)
        raise RuntimeError("boom")

    study.optimize(fail, n_trials=2, catch=(RuntimeError,))
    assert budget.used(study) == 2
    failed = study.tell(study.ask(X), state=TrialState.FAIL)  # e.g. failed by a heartbeat, then requeued:
    assert budget.used(study) == 3
    requeue(study, failed)  # the repeat, still WAITING, replaces it in the count
    assert budget.used(study) == 2
    again = study.ask()
    assert retry_of(study.trials[again.number]) == failed.number and again.params == failed.params
    study.tell(again, state=TrialState.FAIL)
    requeue(study, study.trials[again.number])  # its repeat failed too and was requeued: a chain counts once
    assert budget.used(study) == 2
    study.optimize(lambda t: t.params["x"], n_trials=1)
    assert budget.used(study) == 3 and budget.remaining(study) == 0


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_dead_worker_trial_is_failed_and_requeued(tmp_path):
    study = journal_study(tmp_path)
    trial = study.ask(X)
    run_by(trial, dead_pid())
    alive = study.ask(X)
    run_by(alive, os.getpid())
    assert recover_dead_trials(study) == [trial.number]
    frozen = study.trials[trial.number]
    assert frozen.state == TrialState.FAIL
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert len(waiting) == 1 and waiting[0].params == frozen.params
    assert RetryHeartbeatStaleTrialCallback.retried_trial_number(waiting[0]) == trial.number  # Optuna's own marker
    assert retry_of(waiting[0]) == trial.number
    assert study.trials[alive.number].state == TrialState.RUNNING
    assert TrialBudget(2).used(study) == 1  # the live trial; the dead one is repeated by the waiting one


def test_a_requeued_trial_just_taken_by_a_worker_is_not_recovered_again(tmp_path):
    """The repeat starts with a copy of the dead trial's user attributes, the dead worker's id included, until the
    worker that took it writes its own."""
    study = journal_study(tmp_path)
    trial = study.ask(X)
    run_by(trial, dead_pid())
    assert recover_dead_trials(study) == [trial.number]
    taken = study.ask()  # RUNNING, still carrying the dead worker's id
    assert taken.user_attrs[WORKER_ATTR] == trial.user_attrs[WORKER_ATTR]
    assert recover_dead_trials(study) == []
    assert study.trials[taken.number].state == TrialState.RUNNING


def test_two_workers_recovering_at_once_requeue_a_dead_trial_once(tmp_path, monkeypatch):
    study_a, study_b = journal_study(tmp_path), journal_study(tmp_path)
    trial = study_a.ask(X)
    run_by(trial, dead_pid())
    seen_by_b = study_b.get_trials()  # b lists the trials while a recovers: to b the dead trial is still RUNNING
    assert recover_dead_trials(study_a) == [trial.number]
    monkeypatch.setattr(study_b, "get_trials", lambda **kwargs: seen_by_b)
    assert recover_dead_trials(study_b) == []  # its tell finds the trial failed already
    assert len(study_a.get_trials(states=(TrialState.WAITING,))) == 1


def test_a_dead_trial_on_the_last_grid_point_is_requeued(tmp_path):
    """Telling a GridSampler its last point makes it call study.stop(), which raises outside optimize."""
    grid = optuna.samplers.GridSampler({"x": [0, 1]}, seed=0)
    study = journal_study(tmp_path, sampler=grid)
    study.optimize(lambda t: t.suggest_categorical("x", [0, 1]), n_trials=1)
    trial = study.ask()
    trial.suggest_categorical("x", [0, 1])
    run_by(trial, dead_pid())
    assert recover_dead_trials(study) == [trial.number]
    assert study.sampler is grid
    study.optimize(lambda t: t.suggest_categorical("x", [0, 1]), n_trials=3)  # the repeat, then the grid is done
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert sorted(t.params["x"] for t in done) == [0, 1] and len(study.trials) == 3


def test_rdb_trial_without_heartbeat_is_failed_and_requeued(tmp_path, monkeypatch):
    """RDB storages: a worker killed mid-trial stops its heartbeat; the next worker fails the trial and Optuna's
    retry callback (passed by open_storage) queues its parameters again."""
    import framer.tune.storage as storage

    url = f"sqlite:///{tmp_path / 'study.db'}"
    killed = f"""
import os, signal
import optuna
import framer.tune.storage as storage
storage.HEARTBEAT_INTERVAL, storage.GRACE_PERIOD = 1, 1
study = optuna.create_study(study_name="s", storage=storage.open_storage("{url}"))
def die(trial):
    trial.suggest_float("x", 0, 1)
    os.kill(os.getpid(), signal.SIGKILL)
study.optimize(die, n_trials=1)
"""
    assert subprocess.run([sys.executable, "-c", killed], timeout=120).returncode == -9
    monkeypatch.setattr(storage, "HEARTBEAT_INTERVAL", 1)
    monkeypatch.setattr(storage, "GRACE_PERIOD", 1)
    study = optuna.load_study(study_name="s", storage=open_storage(url))
    deadline = time.monotonic() + 30
    while study.trials[0].state == TrialState.RUNNING and time.monotonic() < deadline:
        time.sleep(0.5)  # the grace period passes
        recover_dead_trials(study)
    dead, retry = study.trials
    assert dead.state == TrialState.FAIL and retry.state == TrialState.WAITING
    assert retry_of(retry) == dead.number and retry.params == dead.params
    assert TrialBudget(1).used(study) == 0
