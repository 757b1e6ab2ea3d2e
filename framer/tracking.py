"""Run tracking: a CSV logger first (the ground truth, and what ``trainer.log_dir`` points at), MLflow second.

MLflow defaults to a SQLite database, ``sqlite:///mlruns/mlflow.db``; ``MLFLOW_TRACKING_URI`` overrides it (for
example ``http://127.0.0.1:5000`` or ``postgresql+psycopg2://...``). The MLflow file store is never used: it is
deprecated and MLflow >= 3.13 refuses it. Reports read the run directory (:mod:`framer.rundir`), never MLflow.

Several runs may start at once on one ``save_dir`` and one SQLite database: a new run claims its ``version_<n>``
directory with an atomic ``mkdir``, and creates its MLflow run with ``MlflowClient`` under a lock file next to the
database (:func:`create_run`) before Lightning's ``MLFlowLogger`` is given the run's id. Only the launching process
does this: the other ranks of a multi-process run create nothing. An unusable backend (:func:`check_tracking_backend`)
is one :class:`TrackingError` line, or, with ``tracking.mlflow_required: false``, a warning and CSV tracking only.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import re
import sqlite3
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.loggers import CSVLogger, Logger, MLFlowLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from framer.errors import UserError, causes
from framer.io import atomic_file, file_lock, to_plain
from framer.provenance import git_commit
from framer.rundir import RunDir, RunRoot

DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"
#: environment variables that name a process's rank; a process where each is unset or 0 is the launching one
RANK_VARIABLES = ("LOCAL_RANK", "NODE_RANK", "RANK", "SLURM_PROCID")
MAX_PARAM_KEY = 250  # MLflow's limit on parameter names
MAX_PARAM_VALUE = 6000  # MLflow's limit on parameter values
#: how long the check before a run waits for an MLflow HTTP server (seconds; one request, no retries)
SERVER_CHECK_TIMEOUT = 5


#: Lightning notices that say nothing about a run: its litlogger advertisement and the deprecation of an API it uses
LIGHTNING_NOISE = ("💡 Tip: For seamless cloud logging", "`isinstance(treespec, LeafSpec)` is deprecated")
LIGHTNING_INFO_LOG = "lightning.pytorch.utilities.rank_zero"  # where Lightning's rank_zero_info lines go


def _not_noise(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith(LIGHTNING_NOISE)


def quiet_lightning_noise() -> None:
    """Drop :data:`LIGHTNING_NOISE` from Lightning's log and warnings (idempotent)."""
    logging.getLogger(LIGHTNING_INFO_LOG).addFilter(_not_noise)
    warnings.filterwarnings("ignore", message=re.escape(LIGHTNING_NOISE[1]))


@contextlib.contextmanager
def without_device_lines() -> Iterator[None]:
    """Drop Lightning's "GPU available: ..." style lines (logged by every new Trainer) for the block."""

    def keep(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(("GPU available", "TPU available", "HPU available"))

    logger = logging.getLogger(LIGHTNING_INFO_LOG)
    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


class TrackingError(UserError, ValueError):
    """A tracking setting that cannot work (for example the MLflow file store)."""


@dataclass
class Tracking:
    """Where runs are recorded: ``<save_dir>/<run_name>/version_<n>/`` on disk, and one MLflow run.

    Args:
        run_name: Name of the run directory under ``save_dir`` and of the MLflow run. Default (CLI):
            ``<data set>-<target>-<model>``, e.g. ``mp-e_form-crystalframer``.
        save_dir: Root directory of the CSV logs, configs, checkpoints and result files.
        version: Version (sub-directory) to write to; default: the next free ``version_<n>``.
        mlflow: Also log to MLflow.
        experiment_name: MLflow experiment.
        tracking_uri: MLflow backend. Default: ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlruns/mlflow.db``.
            File stores (plain paths, ``file:``) are rejected.
        artifact_location: Where a new MLflow experiment stores artifacts. Default: ``artifacts/`` next to a SQLite
            database (``mlruns/artifacts`` with the default URI); for a server, the server's own location.
        tags: Extra MLflow tags.
        mlflow_required: If the MLflow backend cannot be used when the run starts (server unreachable, database
            corrupt or read-only): true stops with one error line; false warns and tracks in CSV files only.
    """

    run_name: str | None = None
    save_dir: str = "runs"
    version: int | str | None = None
    mlflow: bool = True
    experiment_name: str = "framer"
    tracking_uri: str | None = None
    artifact_location: str | None = None
    tags: dict[str, str] | None = None
    mlflow_required: bool = True
    #: (tracking URI, run id) of the MLflow run :meth:`loggers` created in this process; None for a resumed run
    created_run: tuple[str, str] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.run_name = self.run_name or "default"

    def loggers(self, mlflow_run_id: str | None = None, resume_step: int | None = None) -> list[Logger]:
        """A CSVLogger (first, so ``trainer.log_dir`` is the run directory) and, if enabled, an MLFlowLogger. The
        launching process claims the next free ``version_<n>`` (unless ``version`` is set) and creates the MLflow run
        (:attr:`created_run`) unless given the ``mlflow_run_id`` of a resumed run (which starts at ``resume_step``)."""
        uri = resolve_tracking_uri(self.tracking_uri) if self.mlflow else None
        if uri is not None:  # before anything is written
            try:
                check_tracking_backend(uri)
            except TrackingError as err:
                if self.mlflow_required:
                    raise
                warnings.warn(
                    f"{err}; tracking this run in its CSV files only (tracking.mlflow_required false)", stacklevel=2
                )
                uri = None
        launching = is_launching_process()
        version = self.version
        if version is None and launching:  # claimed at once: concurrent runs of one name never share a directory
            version = RunRoot(Path(self.save_dir) / self.run_name).claim().name
        csv_logger = ResumableCSVLogger(self.save_dir, self.run_name, version, resume_step=resume_step)
        if uri is None:
            return [csv_logger]
        if mlflow_run_id is None and launching:
            location = artifact_location(uri, self.artifact_location)
            mlflow_run_id = create_run(uri, self.experiment_name, self.run_name, self.tags, location)
            self.created_run = (uri, mlflow_run_id)
        mlflow_logger = MLFlowLogger(self.experiment_name, tracking_uri=uri, run_id=mlflow_run_id, log_model=False)
        return [csv_logger, mlflow_logger]

    def fail_created_run(self) -> None:
        """End the MLflow run :meth:`loggers` created as FAILED, best effort: its fit failed before it started (once
        it runs, Lightning ends the run itself, FAILED on an exception)."""
        if self.created_run is None:
            return
        from mlflow.tracking import MlflowClient

        (uri, run_id), self.created_run = self.created_run, None
        try:
            MlflowClient(tracking_uri=uri).set_terminated(run_id, "FAILED")
        except Exception as err:
            warnings.warn(f"could not end MLflow run {run_id}: {_first_line(err)}", stacklevel=2)


def is_launching_process() -> bool:
    """True unless this is a non-zero rank started by a launcher (torchrun, Lightning's DDP, SLURM)."""
    return all(os.environ.get(name, "0") in ("", "0") for name in RANK_VARIABLES)


class ResumableCSVLogger(CSVLogger):
    """Lightning's ``CSVLogger``, except that a resumed run keeps the history of its ``metrics.csv``.

    Lightning's writer deletes an existing ``metrics.csv`` when it starts. With ``resume_step`` (the global step of
    the checkpoint the run resumes from), the rows before that step are kept, as in an uninterrupted run: they wait in a
    hidden file while Lightning's writer starts, then are renamed into place (a crash in between leaves them there).
    """

    def __init__(self, *args: Any, resume_step: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.resume_step = resume_step  # None once the history is restored

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self.resume_step is None:
            return super().experiment
        path = Path(self.log_dir) / ExperimentWriter.NAME_METRICS_FILE
        parked = path.with_name(f".{path.name}.resumed")
        header = _park_rows_before(path, parked, self.resume_step)
        with warnings.catch_warnings():  # "... is not empty. Previous log files ... will be deleted": not so here
            warnings.filterwarnings("ignore", message=".*exists and is not empty")
            writer = super().experiment  # Lightning's writer: removes metrics.csv
        if header:
            os.replace(parked, path)
            writer.metrics_keys = header
        self.resume_step = None
        return writer


def _park_rows_before(path: Path, parked: Path, step: int) -> list[str]:
    """Write the rows of ``path`` (or of ``parked``, left by a crash) with a step below ``step`` to ``parked``;
    returns the CSV header, or [] when there is no history to keep."""
    source = path if path.is_file() else parked if parked.is_file() else None
    if source is None:
        return []
    with source.open(newline="") as handle:
        reader = csv.DictReader(handle)
        header = list(reader.fieldnames or [])
        rows = [row for row in reader if _row_step(row) < step]
    if not header:
        return []
    with atomic_file(parked, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
    return header


def _row_step(row: Mapping[str, str]) -> float:
    with contextlib.suppress(ValueError):  # a row a crash cut short
        return float(row.get("step") or "inf")
    return float("inf")


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///...`` URI (relative as given); None for other backends and in memory."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(uri)
    except ArgumentError:
        return None
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database)


def sqlite_lock(tracking_uri: str) -> contextlib.AbstractContextManager:
    """An exclusive file lock next to a SQLite tracking database, ``<db>.lock`` (no-op for other backends): creating a
    client migrates a new database, and two processes creating one experiment at once would both find none."""
    path = sqlite_path(tracking_uri)
    return contextlib.nullcontext() if path is None else file_lock(path.with_name(path.name + ".lock"))


def create_run(
    uri: str, experiment_name: str, run_name: str, tags: Mapping[str, str] | None = None, location: str | None = None
) -> str:
    """Create an MLflow run (and its experiment, with artifacts at ``location``, if new) under :func:`sqlite_lock`;
    returns its id. :class:`TrackingError` when the backend fails."""
    from mlflow.tracking import MlflowClient
    from mlflow.tracking.context.registry import resolve_tags

    with sqlite_lock(uri):
        try:
            client = MlflowClient(tracking_uri=uri)
            experiment = client.get_experiment_by_name(experiment_name)
            if experiment is None or experiment.lifecycle_stage == "deleted":
                try:
                    experiment_id = client.create_experiment(experiment_name, artifact_location=location)
                except Exception:  # created meanwhile by another process (backends without the lock)
                    experiment = client.get_experiment_by_name(experiment_name)
                    if experiment is None:
                        raise
                    experiment_id = experiment.experiment_id
            else:
                experiment_id = experiment.experiment_id
            run = client.create_run(experiment_id, run_name=run_name, tags=resolve_tags(dict(tags or {})))
        except Exception as err:  # the backend failed after the check before the run: one line, not a traceback
            raise TrackingError(f"MLflow tracking at {uri} failed: {_first_line(err)}") from err
    return run.info.run_id


def resolve_tracking_uri(uri: str | None = None) -> str:
    """``$MLFLOW_TRACKING_URI``, else ``uri``, else the SQLite default, with a relative SQLite path made absolute (runs
    started elsewhere share one database) and its directory created; file stores raise :class:`TrackingError`."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or uri or DEFAULT_TRACKING_URI
    if uri.startswith("file:") or "://" not in uri:
        raise TrackingError(
            f"MLflow tracking URI {uri!r} is a file store, which framer never uses; use sqlite:///path/mlflow.db, "
            "http://host:port or postgresql+psycopg2://..."
        )
    path = sqlite_path(uri)
    if path is not None:
        absolute = Path.cwd() / path  # ``path`` itself when absolute
        absolute.parent.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{absolute}"
    return uri


@contextlib.contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for the block only."""
    previous = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def check_tracking_backend(uri: str) -> None:
    """Make sure the MLflow backend at ``uri`` can be used, within seconds; :class:`TrackingError` if not. A SQLite
    file must be a writable database in a writable directory, a server answer one request within
    ``SERVER_CHECK_TIMEOUT`` seconds; other backends (PostgreSQL, ...) are left to MLflow."""
    path = sqlite_path(uri)
    if path is not None:
        hint = "use another MLFLOW_TRACKING_URI, or --tracking.mlflow false"
        if not os.access(path.parent, os.W_OK):
            raise TrackingError(f"MLflow tracking database {path}: its directory is not writable; {hint}")
        if not path.exists():
            return
        if not os.access(path, os.W_OK):  # file modes, a read-only mount, the immutable flag
            raise TrackingError(f"MLflow tracking database {path} cannot be written (read-only); {hint}")
        try:
            with contextlib.closing(sqlite3.connect(f"{path.as_uri()}?mode=rw", uri=True, timeout=30)) as connection:
                connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.Error as err:
            raise TrackingError(f"MLflow tracking database {path} cannot be used ({err}); {hint}") from None
    elif uri.startswith(("http://", "https://")):
        from mlflow.tracking import MlflowClient

        limits = {"MLFLOW_HTTP_REQUEST_TIMEOUT": str(SERVER_CHECK_TIMEOUT), "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
        try:
            with _environment(limits):
                MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
        except Exception as err:  # named by its innermost cause, e.g. "[Errno 111] Connection refused" under urllib3's
            cause = next((_first_line(e) for e in reversed(causes(err)) if str(e).strip()), _first_line(err))
            raise TrackingError(
                f"MLflow tracking server {uri} cannot be reached ({cause[:300]}); start it, set "
                "MLFLOW_TRACKING_URI to a server that runs, or use --tracking.mlflow false "
                "(--tracking.mlflow_required false: warn and track in CSV files only)"
            ) from None


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def artifact_location(tracking_uri: str, configured: str | None = None) -> str | None:
    """Where a new MLflow experiment keeps its artifacts: ``configured`` (local paths made absolute ``file://``
    URIs), else ``artifacts/`` next to a SQLite database, else None (the server's default)."""
    if configured:
        return configured if "://" in configured else Path(configured).expanduser().resolve().as_uri()
    path = sqlite_path(tracking_uri)
    return (path.parent / "artifacts").resolve().as_uri() if path is not None else None


def param_key(name: str) -> str:
    """An MLflow parameter name: characters MLflow refuses replaced by ``_``, at most 250 characters."""
    return re.sub(r"[^a-zA-Z0-9_/. -]+", "_", name)[:MAX_PARAM_KEY]


def find_logger(loggers: Iterable[Logger], kind: type) -> Any:
    return next((lg for lg in loggers if isinstance(lg, kind)), None)


def run_dir(trainer: Any) -> Path | None:
    """The run directory (the CSV logger's ``log_dir``) without a collective call; None without a CSV logger."""
    logger = find_logger(trainer.loggers, CSVLogger)
    return Path(logger.log_dir) if logger is not None else None


# ---- run metadata
def datamodule_info(datamodule: Any) -> dict[str, Any]:
    """Dataset name, target, units and split fingerprints of a datamodule (whatever it exposes)."""
    facts = {key: getattr(datamodule, key, None) for key in ("dataset_name", "target", "target_units")}
    info: dict[str, Any] = {key: value for key, value in facts.items() if value is not None and not callable(value)}
    fingerprints = getattr(datamodule, "split_fingerprints", None)
    if callable(fingerprints):
        try:
            info["splits"] = to_plain(fingerprints())
        except Exception as err:  # a report must not kill a run
            warnings.warn(f"could not compute split fingerprints: {err}", stacklevel=2)
    stats = getattr(datamodule, "target_stats", None)
    if callable(stats):
        try:
            mean, std = stats()
            info["target_mean"], info["target_std"] = float(mean), float(std)
        except Exception as err:
            warnings.warn(f"could not compute target statistics: {err}", stacklevel=2)
    return info


def log_run_start(trainer: Any, module: Any, datamodule: Any) -> dict[str, Any]:
    """Write ``run.json`` into the run directory and record ``config.yaml``, commit, splits, size and torch's CPU
    threads in MLflow. Runs on global rank 0 only, so it must not make collective calls."""
    network = getattr(module, "model", module)  # the SWA copy is not counted
    info: dict[str, Any] = {
        **datamodule_info(datamodule),
        "num_params": sum(p.numel() for p in network.parameters()),
        "num_trainable_params": sum(p.numel() for p in network.parameters() if p.requires_grad),
        "threads": torch.get_num_threads(),
    }
    git = git_commit()
    if git:
        info.update(git_commit=git["commit"], git_dirty=git["dirty"])
    mlflow_logger = find_logger(trainer.loggers, MLFlowLogger)
    if mlflow_logger is not None:
        info["mlflow_run_id"] = mlflow_logger.run_id
        info["mlflow_tracking_uri"] = mlflow_logger.experiment.tracking_uri
    log_dir = run_dir(trainer)  # not trainer.log_dir: that is a collective call, and this runs on rank 0 only
    run = RunDir(log_dir) if log_dir else None
    if run is not None:
        info["run_dir"] = str(run.path.resolve())
        run.update_info(info)
    if mlflow_logger is not None:
        client, run_id = mlflow_logger.experiment, mlflow_logger.run_id
        for key in ("git_commit", "git_dirty", "dataset_name", "target", "target_units", "run_dir"):
            if info.get(key) is not None:
                client.set_tag(run_id, key, str(info[key]))
        params = {k: info[k] for k in ("num_params", "num_trainable_params", "threads")}
        params.update({f"train_stats/{k}": info[k] for k in ("target_mean", "target_std") if k in info})
        for name, fingerprint in (info.get("splits") or {}).items():
            text = fingerprint if isinstance(fingerprint, str) else json.dumps(fingerprint, sort_keys=True)
            params[f"split/{name}"] = text
        for key, value in params.items():
            try:
                client.log_param(run_id, param_key(key), str(value)[:MAX_PARAM_VALUE])
            except Exception as err:  # an existing param with another value (a resumed run): keep the first
                warnings.warn(f"MLflow param {key!r} not logged: {_first_line(err)}", stacklevel=2)
        log_files(client, run_id, (run.config, run.info) if run is not None else ())
    return info


def log_artifacts(loggers: Iterable[Logger], paths: Iterable[str | Path]) -> None:
    """Log files as artifacts of the MLflow run of ``loggers`` (if one of them is an MLFlowLogger)."""
    mlflow_logger = find_logger(loggers, MLFlowLogger)
    if mlflow_logger is not None:
        log_files(mlflow_logger.experiment, mlflow_logger.run_id, paths)


def log_files(client: Any, run_id: str, paths: Iterable[str | Path], subdir: str | None = None) -> None:
    """Log the existing files among ``paths`` as artifacts of an MLflow run (into ``subdir``), best effort (a tracking
    error only warns). ``client``: an ``MlflowClient``, or a tracking URI to make one for."""
    try:
        if isinstance(client, str):
            from mlflow.tracking import MlflowClient

            client = MlflowClient(tracking_uri=client)
        for path in paths:
            if Path(path).is_file():
                client.log_artifact(run_id, str(path), artifact_path=subdir)
    except Exception as err:  # tracking must never fail a run
        warnings.warn(f"could not log files to MLflow run {run_id}: {_first_line(err)}", stacklevel=2)
