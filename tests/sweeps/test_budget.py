"""The trial budget shared by workers and recovery of trials whose worker died (no training)."""

from __future__ import annotations

import subprocess
import sys

import optuna
from optuna.trial import TrialState

from framer.tune.runner import TrialBudget
from framer.tune.storage import INTERRUPTED_ATTR, RETRY_ATTR, WORKER_ATTR, open_storage, recover_dead_trials


def journal_study(tmp_path, name="s"):
    storage = open_storage(f"journal:{tmp_path / 'journal.log'}")
    return optuna.create_study(study_name=name, storage=storage, load_if_exists=True)


def test_budget_counts_every_worker_and_stops(tmp_path):
    budget = TrialBudget(4)
    study_a, study_b = journal_study(tmp_path), journal_study(tmp_path)  # two "workers" on one journal
    study_a.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    assert budget.remaining(study_b) == 2
    study_b.optimize(lambda t: t.suggest_float("x", 0, 1), callbacks=[budget], n_trials=10)
    assert len(study_a.get_trials(states=(TrialState.COMPLETE,))) == 4
    assert budget.remaining(study_a) == 0


def test_failed_trials_count_but_interrupted_do_not(tmp_path):
    study = journal_study(tmp_path)
    budget = TrialBudget(3)

    def fail(trial):
        trial.suggest_float("x", 0, 1)
        raise RuntimeError("boom")

    study.optimize(fail, n_trials=2, catch=(RuntimeError,))
    assert budget.used(study) == 2
    trial = study.ask()
    study._storage.set_trial_user_attr(trial._trial_id, INTERRUPTED_ATTR, True)
    study.tell(trial, state=TrialState.FAIL)
    assert budget.used(study) == 2
    retried = study.trials[0]  # e.g. failed by a heartbeat, then requeued: the repeat replaces it in the count
    study.enqueue_trial(retried.params, user_attrs={RETRY_ATTR: retried.number})
    assert budget.used(study) == 1


def test_dead_worker_trial_is_failed_and_requeued(tmp_path):
    study = journal_study(tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    import socket

    trial.set_user_attr(WORKER_ATTR, f"{socket.gethostname()}:{int(dead.stdout)}")
    alive = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    alive.set_user_attr(WORKER_ATTR, f"{socket.gethostname()}:{__import__('os').getpid()}")
    assert recover_dead_trials(study) == [trial.number]
    frozen = study.trials[trial.number]
    assert frozen.state == TrialState.FAIL and frozen.user_attrs[INTERRUPTED_ATTR]
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert len(waiting) == 1 and waiting[0].system_attrs["fixed_params"] == frozen.params
    assert waiting[0].user_attrs[RETRY_ATTR] == trial.number
    assert study.trials[alive.number].state == TrialState.RUNNING
