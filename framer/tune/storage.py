"""Where a study lives: a journal file by default, SQLite for one machine, PostgreSQL for many.

``--storage`` accepts:

- nothing: ``JournalStorage(JournalFileBackend(<study-dir>/journal.log))``. Several worker processes on one
  machine (or on a shared, lock-capable file system) share it with no server;
- ``journal:<path>`` or a path ending in ``.log``: a journal file elsewhere;
- ``sqlite:///<path>``: SQLite (one machine, a few workers; never on NFS);
- ``postgresql://user:pass@host/db``: PostgreSQL for workers on several machines. SQLAlchemy 2 maps plain
  ``postgresql://`` to psycopg 3, which is not installed, so it is rewritten to ``postgresql+psycopg2://``.

RDB storages record heartbeats, so a trial whose worker died is failed by the next worker and its parameters are
queued again (Optuna's ``RetryHeartbeatStaleTrialCallback``). Journal storages get the same recovery for workers on
this machine (their pid is recorded), and a journal line cut short by a killed worker is dropped when the journal is
next opened (otherwise the next append would glue onto it and make the whole study unreadable). A requeued trial
names the trial it repeats in Optuna's own system attributes (:func:`retry_of`).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import random
import re
import socket
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import optuna
from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock
from optuna.trial import FrozenTrial, TrialState

from framer.tracking import sqlite_path

HEARTBEAT_INTERVAL = 30  # s
GRACE_PERIOD = 120  # s without a heartbeat before a RUNNING trial counts as dead
WORKER_ATTR = "worker"  # "<host>:<pid>" of the process that runs a trial


def storage_url(url: str) -> str:
    """Canonical storage URL: ``postgres(ql)://`` -> ``postgresql+psycopg2://``; others unchanged."""
    return re.sub(r"^postgres(ql)?://", "postgresql+psycopg2://", url)


def storage_spec(url: str | None, study_dir: str | Path) -> str:
    """A string that reopens the same storage in another process (another worker)."""
    if not url:
        return f"journal:{(Path(study_dir) / 'journal.log').resolve()}"
    if url.startswith("journal:") or ("://" not in url and url.endswith(".log")):
        return f"journal:{Path(url.removeprefix('journal:')).resolve()}"
    path = sqlite_path(url)
    return f"sqlite:///{path.absolute()}" if path is not None else storage_url(url)


def open_storage(spec: str, heartbeat: bool = True) -> optuna.storages.BaseStorage:
    """Open the storage named by :func:`storage_spec` (creating a journal file's directory)."""
    if spec.startswith("journal:"):
        path = Path(spec.removeprefix("journal:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        dropped = repair_journal(path)
        if dropped:
            warnings.warn(f"{path}: dropped a partial last line ({dropped} bytes) of a killed worker", stacklevel=2)
        return JournalStorage(JournalFileBackend(str(path)))
    if (path := sqlite_path(spec)) is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    kwargs = {}
    if heartbeat:  # a trial without a heartbeat for GRACE_PERIOD is failed and requeued by the next worker
        kwargs = dict(
            heartbeat_interval=HEARTBEAT_INTERVAL, grace_period=GRACE_PERIOD, heartbeat_stale_trial_callback=requeue
        )
    engine = {"pool_pre_ping": True} if spec.startswith("postgresql") else None
    from sqlalchemy.exc import SQLAlchemyError

    for attempt in range(4):  # workers starting together on a new database race to create its tables
        try:
            return RDBStorage(spec, engine_kwargs=engine, **kwargs)
        except SQLAlchemyError:
            time.sleep(1.0 + random.random() * (attempt + 1))
    return RDBStorage(spec, engine_kwargs=engine, **kwargs)  # the fifth try raises its error


def repair_journal(path: str | Path) -> int:
    """Truncate a journal file after its last complete line (see the module docstring), under the journal's own
    lock; returns bytes dropped."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return 0
    lock = JournalFileSymlinkLock(str(path))
    lock.acquire()
    try:
        with path.open("rb+") as handle:
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as view:
                size, end = len(view), view.rfind(b"\n") + 1
            if end == size:
                return 0
            handle.truncate(end)
            handle.flush()
            os.fsync(handle.fileno())
            return size - end
    finally:
        lock.release()


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def _experimental_ok() -> Iterator[None]:
    """Optuna's retry and heartbeat helpers are marked experimental and warn on every use."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def requeue(study: optuna.Study, trial: FrozenTrial) -> None:
    """Queue the parameters of a trial whose worker died again (a WAITING copy that names it: :func:`retry_of`)."""
    with _experimental_ok():
        RetryHeartbeatStaleTrialCallback()(study, trial)


def retry_of(trial: FrozenTrial) -> int | None:
    """The number of the trial that ``trial`` repeats (its worker died), or None."""
    with _experimental_ok():
        history = RetryHeartbeatStaleTrialCallback.retry_history(trial)
    return history[-1] if history else None


def recover_dead_trials(study: optuna.Study) -> list[int]:
    """Fail RUNNING trials whose worker on this host has exited; requeue their parameters. Returns their numbers.

    Trials run by other hosts are left alone (RDB storages handle those by heartbeat). Of several workers recovering
    at once, only the one whose ``tell`` fails the trial requeues it.
    """
    host = socket.gethostname()
    trials = study.get_trials(deepcopy=False)
    recovered = []
    # a dead trial teaches the sampler nothing (and a GridSampler told its last point calls study.stop(), which
    # raises outside optimize)
    sampler, study.sampler = study.sampler, optuna.samplers.RandomSampler()
    try:
        for trial in trials:
            worker = str(trial.user_attrs.get(WORKER_ATTR, ""))
            name, _, pid = worker.rpartition(":")
            if trial.state != TrialState.RUNNING or name != host or not pid.isdigit() or _pid_alive(int(pid)):
                continue
            repeats = retry_of(trial)
            if repeats is not None and trials[repeats].user_attrs.get(WORKER_ATTR) == worker:
                continue  # a requeued trial just taken by a worker that has not written its own id over the copy yet
            try:  # without skip_if_finished: a trial finished meanwhile (another worker failed it) raises
                failed = study.tell(trial.number, state=TrialState.FAIL)
            except (ValueError, optuna.exceptions.UpdateFinishedTrialError):
                continue
            requeue(study, failed)
            recovered.append(trial.number)
    finally:
        study.sampler = sampler
    with _experimental_ok():
        optuna.storages.fail_stale_trials(study)  # RDB storages: trials without a recent heartbeat (any host)
    return recovered


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The study's best trial; None before one completed."""
    try:
        return study.best_trial
    except ValueError:
        return None


def load_study_from_dir(study_dir: str | Path, storage: str | None = None, study_name: str | None = None):
    """Load a study from ``<study_dir>/journal.log`` (or ``storage``); the name defaults to the only study there."""
    spec = storage_spec(storage, study_dir)
    opened = open_storage(spec, heartbeat=False)
    if study_name is None:
        names = [s.study_name for s in optuna.get_all_study_summaries(opened, include_best_trial=False)]
        if len(names) != 1:
            raise ValueError(f"{spec} holds studies {names}; pass --study-name")
        study_name = names[0]
    return optuna.load_study(study_name=study_name, storage=opened)
