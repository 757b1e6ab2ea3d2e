"""Run tracking: a CSV logger first (the ground truth, and what ``trainer.log_dir`` points at), MLflow second.

MLflow defaults to a SQLite database, ``sqlite:///mlruns/mlflow.db``, with artifacts in ``mlruns/artifacts``;
``MLFLOW_TRACKING_URI`` overrides it (for example ``http://127.0.0.1:5000`` or ``postgresql+psycopg2://...``).
The MLflow file store is never used: it is deprecated and MLflow >= 3.13 refuses it.

Every run directory ``<save_dir>/<run_name>/version_<n>/`` holds ``config.yaml`` (the resolved config),
``run.json`` (git commit, split fingerprints, parameter count, MLflow run id), ``metrics.csv``, ``checkpoints/``
and, after testing, ``results.json`` and ``predictions.csv`` (id, target, prediction). Reports read these files and
never depend on MLflow. Only global rank 0 writes, and every write is atomic (temporary file + rename).

Several runs may start at once on one ``save_dir`` and one SQLite database: a new run claims its ``version_<n>``
directory with an atomic ``mkdir`` (two runs of the same name never share a directory), and the first contact with
the database (schema migrations, experiment and run creation) holds an exclusive lock file next to it.

Before a run starts, :func:`check_tracking_backend` makes sure MLflow can be used, within seconds: an HTTP server is
asked once with a 5 s timeout and no retries, a SQLite file must be a readable and writable database. A backend that
cannot be used is one :class:`TrackingError` line, or, with ``tracking.mlflow_required: false``, a warning and a run
tracked in its CSV files only. A resumed run keeps the rows of ``metrics.csv`` logged before the step it resumes from
(:class:`ResumableCSVLogger`).
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import random
import re
import sqlite3
import subprocess
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger, Logger, MLFlowLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from framer.errors import UserError
from framer.io import atomic_file, file_lock, to_plain
from framer.rundir import RunDir, RunRoot

DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"
DEFAULT_ARTIFACT_LOCATION = "mlruns/artifacts"
#: how long the check before a run waits for an MLflow HTTP server (seconds; one request, no retries)
SERVER_CHECK_TIMEOUT = 5


class TrackingError(UserError, ValueError):
    """A tracking setting that cannot work (for example the MLflow file store)."""


class Tracking:
    """Where runs are recorded: ``<save_dir>/<run_name>/version_<n>/`` on disk, and one MLflow run.

    Args:
        run_name: Name of the run directory under ``save_dir`` and of the MLflow run.
        save_dir: Root directory of the CSV logs, configs, checkpoints and result files.
        version: Version (sub-directory) to write to; default: the next free ``version_<n>``.
        mlflow: Also log to MLflow.
        experiment_name: MLflow experiment.
        tracking_uri: MLflow backend. Default: ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlruns/mlflow.db``.
            File stores (plain paths, ``file:``) are rejected.
        artifact_location: Where a new MLflow experiment stores artifacts (default ``mlruns/artifacts``).
        tags: Extra MLflow tags.
        mlflow_required: If the MLflow backend cannot be used when the run starts (server unreachable, database
            corrupt or read-only): true stops with one error line; false warns and tracks the run in its CSV files
            only.
    """

    def __init__(
        self,
        run_name: str = "default",
        save_dir: str = "runs",
        version: int | str | None = None,
        mlflow: bool = True,
        experiment_name: str = "framer",
        tracking_uri: str | None = None,
        artifact_location: str | None = None,
        tags: dict[str, str] | None = None,
        mlflow_required: bool = True,
    ) -> None:
        self.run_name = run_name
        self.save_dir = save_dir
        self.version = version
        self.mlflow = mlflow
        self.experiment_name = experiment_name
        self.tracking_uri = tracking_uri
        self.artifact_location = artifact_location
        self.tags = dict(tags or {})
        self.mlflow_required = mlflow_required

    def loggers(self, mlflow_run_id: str | None = None, resume_step: int | None = None) -> list[Logger]:
        """A CSVLogger (first, so ``trainer.log_dir`` is the run directory) and, if enabled, an MLFlowLogger.

        Without an explicit ``version``, the launching process (not the other ranks of a multi-process run) claims
        the next free ``version_<n>`` directory at once, so concurrent runs of one name never share a directory.
        ``resume_step``: the global step of the checkpoint a resumed run starts from (its earlier rows are kept).
        The MLflow backend is checked first (:func:`check_tracking_backend`).
        """
        use_mlflow = self.mlflow
        if use_mlflow:  # before anything is written
            uri = resolve_tracking_uri(self.tracking_uri)
            try:
                check_tracking_backend(uri)
            except TrackingError as err:
                if self.mlflow_required:
                    raise
                warnings.warn(
                    f"{err}; tracking this run in its CSV files only (tracking.mlflow_required false)", stacklevel=2
                )
                use_mlflow = False
        version = self.version
        if version is None and is_launching_process():
            version = RunRoot.of(self.save_dir, self.run_name).claim().name
        loggers: list[Logger] = [
            ResumableCSVLogger(save_dir=self.save_dir, name=self.run_name, version=version, resume_step=resume_step)
        ]
        if use_mlflow:
            with sqlite_lock(uri):  # creating the client migrates a new database: one process at a time
                logger = LockingMLFlowLogger(
                    experiment_name=self.experiment_name,
                    run_name=self.run_name,
                    tracking_uri=uri,
                    artifact_location=resolve_artifact_location(self.artifact_location),
                    tags=self.tags or None,
                    run_id=mlflow_run_id,
                    log_model=False,
                )
            loggers.append(logger)
        return loggers


def is_launching_process() -> bool:
    """True unless this is a non-zero rank started by a launcher (torchrun, Lightning's DDP, SLURM)."""
    return all(os.environ.get(name, "0") in ("", "0") for name in ("LOCAL_RANK", "NODE_RANK", "RANK"))


class ResumableCSVLogger(CSVLogger):
    """Lightning's ``CSVLogger``, except that a resumed run keeps the history of its ``metrics.csv``.

    Lightning's writer deletes an existing ``metrics.csv`` when it starts. With ``resume_step`` (the global step of
    the checkpoint the run resumes from), the rows logged before that step are kept and the later ones (logged by
    the interrupted run after its checkpoint, and about to be logged again) dropped, so the file ends up as the one
    of an uninterrupted run. The kept rows wait in a hidden file while Lightning's writer starts and are then renamed
    into place; a crash in between leaves them there for the next resume.

    Args:
        resume_step: Global step of the checkpoint the run resumes from; None for a new run.
        **kwargs: Arguments of ``CSVLogger``.
    """

    def __init__(self, *args: Any, resume_step: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.resume_step = resume_step
        self._history_restored = False

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._history_restored or self.resume_step is None:
            return _CSV_EXPERIMENT(self)
        path = Path(self.log_dir) / ExperimentWriter.NAME_METRICS_FILE
        parked = path.with_name(f".{path.name}.resumed")
        header = _park_rows_before(path, parked, self.resume_step)
        writer = _CSV_EXPERIMENT(self)  # Lightning's writer: removes metrics.csv
        if header:
            os.replace(parked, path)
            writer.metrics_keys = header
        self._history_restored = True
        return writer


_CSV_EXPERIMENT = CSVLogger.experiment.fget


def _park_rows_before(path: Path, parked: Path, step: int) -> list[str]:
    """Write the rows of ``path`` (or of ``parked``, left by a crash) with a step below ``step`` to ``parked``.

    Returns the CSV header, or [] when there is no history to keep.
    """
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
    try:
        return float(row.get("step") or "inf")
    except ValueError:
        return float("inf")


@contextlib.contextmanager
def sqlite_lock(tracking_uri: str) -> Iterator[None]:
    """An exclusive file lock next to a SQLite tracking database (no-op for other backends)."""
    if not tracking_uri.startswith("sqlite:///"):
        yield
        return
    with file_lock(tracking_uri[len("sqlite:///") :] + ".lock"):
        yield


_MLFLOW_EXPERIMENT = MLFlowLogger.experiment.fget


class LockingMLFlowLogger(MLFlowLogger):
    """``MLFlowLogger`` whose first use (experiment and run creation) holds :func:`sqlite_lock`.

    Two runs starting together would otherwise both find no experiment and both create it; the loser's run dies with
    "already exists". On other backends (no lock) a failed first use is retried once, when the experiment exists.
    """

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        if self._initialized:
            return self._mlflow_client
        with sqlite_lock(self._tracking_uri):
            try:
                try:
                    return _MLFLOW_EXPERIMENT(self)
                except Exception:
                    if self._experiment_id is not None or self._run_id is not None:
                        raise
                    time.sleep(0.5 + random.random())
                    return _MLFLOW_EXPERIMENT(self)
            except Exception as err:  # the backend failed after the check before the run: one line, not a traceback
                raise TrackingError(f"MLflow tracking at {self._tracking_uri} failed: {_first_line(err)}") from err


def resolve_tracking_uri(uri: str | None = None) -> str:
    """The MLflow tracking URI to use: ``$MLFLOW_TRACKING_URI``, else ``uri``, else the SQLite default.

    A relative SQLite path is made absolute (so runs started from other directories share one database) and its
    directory is created. File stores raise :class:`TrackingError`.
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI") or uri or DEFAULT_TRACKING_URI
    if uri.startswith("file:") or "://" not in uri:
        raise TrackingError(
            f"MLflow tracking URI {uri!r} is a file store, which framer never uses; use sqlite:///path/mlflow.db, "
            "http://host:port or postgresql+psycopg2://..."
        )
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///") :]
        if path and path != ":memory:":
            absolute = Path(path) if path.startswith("/") else Path.cwd() / path
            absolute.parent.mkdir(parents=True, exist_ok=True)
            uri = f"sqlite:///{absolute}"
    return uri


def check_tracking_backend(uri: str) -> None:
    """Make sure the MLflow backend at ``uri`` can be used, within seconds; :class:`TrackingError` if not.

    SQLite: the file, when it exists, must be a database (its schema readable) this process may write, in a writable
    directory.
    HTTP(S): the server must answer one request within ``SERVER_CHECK_TIMEOUT`` seconds (MLflow's client, with
    ``MLFLOW_HTTP_REQUEST_TIMEOUT`` and ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` set for this request only). Other
    backends (PostgreSQL, ...) are left to MLflow.
    """
    if uri.startswith("sqlite:///"):
        _check_sqlite(Path(uri[len("sqlite:///") :]), uri)
    elif uri.startswith(("http://", "https://")):
        _check_server(uri)


def _check_sqlite(path: Path, uri: str) -> None:
    if str(path) in ("", ":memory:"):
        return
    hint = "use another MLFLOW_TRACKING_URI, or --tracking.mlflow false"
    if not os.access(path.parent, os.W_OK):
        raise TrackingError(f"MLflow tracking database {path}: its directory is not writable; {hint}")
    if not path.exists():
        return
    if not os.access(path, os.W_OK):  # file modes, a read-only mount, the immutable flag
        raise TrackingError(f"MLflow tracking database {path} cannot be written (read-only); {hint}")
    try:
        connection = sqlite3.connect(f"{path.as_uri()}?mode=rw", uri=True, timeout=30)
        try:
            connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
        finally:
            connection.close()
    except sqlite3.Error as err:
        raise TrackingError(f"MLflow tracking database {path} cannot be used ({err}); {hint}") from None


@contextlib.contextmanager
def _environment(**values: str) -> Iterator[None]:
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


def _check_server(uri: str) -> None:
    from mlflow.tracking import MlflowClient

    limits = {"MLFLOW_HTTP_REQUEST_TIMEOUT": str(SERVER_CHECK_TIMEOUT), "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    try:
        with _environment(**limits):
            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except Exception as err:
        raise TrackingError(
            f"MLflow tracking server {uri} cannot be reached ({_root_cause(err)[:300]}); start it, set "
            "MLFLOW_TRACKING_URI to a server that runs, or use --tracking.mlflow false "
            "(--tracking.mlflow_required false: warn and track in CSV files only)"
        ) from None


def _root_cause(err: BaseException) -> str:
    """The innermost exception of a chain (e.g. ``[Errno 111] Connection refused`` under MLflow's and urllib3's)."""
    seen = [err]
    while (nxt := seen[-1].__cause__ or seen[-1].__context__) is not None and nxt not in seen and len(seen) < 20:
        seen.append(nxt)
    return next((_first_line(e) for e in reversed(seen) if str(e).strip()), _first_line(err))


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def resolve_artifact_location(location: str | None) -> str:
    """Artifact root for new MLflow experiments: an absolute ``file://`` URI for local paths."""
    location = location or DEFAULT_ARTIFACT_LOCATION
    if "://" in location:
        return location
    path = Path(location).expanduser().resolve()
    return path.as_uri()


def find_logger(loggers: Iterable[Logger], kind: type) -> Any:
    return next((lg for lg in loggers if isinstance(lg, kind)), None)


def run_dir(trainer: Any) -> Path | None:
    """The run directory (the CSV logger's ``log_dir``) without a collective call; None without a CSV logger."""
    logger = find_logger(trainer.loggers, CSVLogger)
    return Path(logger.log_dir) if logger is not None else None


# --------------------------------------------------------------------------------------------------------------------
# run metadata
def git_commit(path: str | Path | None = None) -> dict[str, Any]:
    """Commit hash and dirty flag of the repository holding ``path`` (default: this package); empty if not a repo."""
    path = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(path), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"git_commit": commit, "git_dirty": bool(status)}


def datamodule_info(datamodule: Any) -> dict[str, Any]:
    """Dataset name, target, units and split fingerprints of a datamodule (whatever it exposes)."""
    info: dict[str, Any] = {}
    if datamodule is None:
        return info
    for key in ("dataset_name", "target", "target_units"):
        value = getattr(datamodule, key, None)
        if value is not None and not callable(value):
            info[key] = value
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


def count_parameters(module: Any) -> dict[str, int]:
    """Parameters of the network (``module.model`` when present; the SWA copy is not counted)."""
    net = getattr(module, "model", module)
    params = list(net.parameters())
    return {
        "num_params": sum(p.numel() for p in params),
        "num_trainable_params": sum(p.numel() for p in params if p.requires_grad),
    }


def log_run_start(trainer: Any, module: Any, datamodule: Any, config_path: str | Path | None) -> dict[str, Any]:
    """Write ``run.json`` into the run directory and record config, commit, splits and size in MLflow.

    Runs on global rank 0 only, so it must not make collective calls.
    """
    info: dict[str, Any] = {**git_commit(), **datamodule_info(datamodule), **count_parameters(module)}
    mlflow_logger = find_logger(trainer.loggers, MLFlowLogger)
    if mlflow_logger is not None:
        info["mlflow_run_id"] = mlflow_logger.run_id
        info["mlflow_tracking_uri"] = mlflow_logger._tracking_uri
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
        params = {k: info[k] for k in ("num_params", "num_trainable_params") if k in info}
        params.update({f"train_stats/{k}": info[k] for k in ("target_mean", "target_std") if k in info})
        for name, fingerprint in (info.get("splits") or {}).items():
            text = fingerprint if isinstance(fingerprint, str) else json.dumps(fingerprint, sort_keys=True)
            params[f"split/{name}"] = text
        _log_params(client, run_id, params)
        for path in (config_path, run.info if run is not None else None):
            if path is not None and Path(path).is_file():
                client.log_artifact(run_id, str(path))
    return info


def _log_params(client: Any, run_id: str, params: Mapping[str, Any]) -> None:
    for key, value in params.items():
        try:
            client.log_param(run_id, re.sub(r"[^a-zA-Z0-9_/. -]+", "_", key), str(value)[:6000])
        except Exception as err:  # an existing param with another value (a resumed run): keep the first
            warnings.warn(f"MLflow param {key!r} not logged: {str(err).splitlines()[0]}", stacklevel=2)


def log_artifacts(loggers: Iterable[Logger], paths: Iterable[str | Path]) -> None:
    """Log files as artifacts of the MLflow run of ``loggers`` (if one of them is an MLFlowLogger)."""
    mlflow_logger = find_logger(loggers, MLFlowLogger)
    if mlflow_logger is not None:
        log_files(mlflow_logger.experiment, mlflow_logger.run_id, paths)


def log_files(client: Any, run_id: str, paths: Iterable[str | Path], subdir: str | None = None) -> None:
    """Log the existing files among ``paths`` as artifacts of an MLflow run (into ``subdir``).

    ``client``: an ``MlflowClient``, or a tracking URI to make one for. Best effort: a tracking error only warns.
    """
    try:
        if isinstance(client, str):
            from mlflow.tracking import MlflowClient

            client = MlflowClient(tracking_uri=client)
        for path in paths:
            if Path(path).is_file():
                client.log_artifact(run_id, str(path), artifact_path=subdir)
    except Exception as err:  # tracking must never fail a run
        warnings.warn(f"could not log files to MLflow run {run_id}: {_first_line(err)}", stacklevel=2)


def log_final_metrics(loggers: Iterable[Logger], metrics: Mapping[str, Any], step: int | None = None) -> None:
    """Log the numeric entries of ``metrics`` to every logger."""
    numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    for logger in loggers:
        logger.log_metrics(numeric, step=step)
        logger.save()
