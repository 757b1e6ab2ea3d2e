"""The run directory: the one place that knows where a run's files are, and reads and writes them.

A run name ``<save_dir>/<run_name>/`` (a :class:`RunRoot`) holds one directory per ``fit``, ``version_<n>/`` (a
:class:`RunDir`), plus the files of the launcher that started it::

    <save_dir>/<run_name>/           RunRoot
        cell.json                    which table cell and seed the run is (framer.reproduce)
        FAILED                       the launcher's note that the last attempt failed (its message)
        launch.log                   the output of a run started as a subprocess
        version_<n>/                 RunDir: one fit (resumed in place with --ckpt_path last)
            config.yaml              the resolved config (LightningCLI)
            hparams.yaml, metrics.csv    Lightning's CSV logger: hyperparameters, per-step and per-epoch metrics
            run.json                 git commit, split fingerprints, parameter count, MLflow run id
            checkpoints/             best-val checkpoint and last.ckpt
            results.json             the final test metrics and facts of the run (``metrics.json`` before)
            predictions.csv          id, target, prediction of the final (SWA) model on the test split
            predictions_best.csv     the same for the best-val checkpoint
            figures/                 parity plot, error histogram, learning curves
            test/<n>/, validate/<n>/, predict/<n>/   later evaluations of the run's checkpoints (never its results)
            .framer.lock             held by the fit that runs in it
    <runs>/manifest.json             every run a reproduction expects (framer.reproduce)

The results of a run are those of its version directory, never those of a later ``test/<n>/`` evaluation. A fit
holds :meth:`RunDir.lock` while it runs, so a second process resuming the same run is refused; the OS lock ends with
the process, also on SIGKILL, so a crashed run never leaves a stale lock (the empty lock file stays).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from filelock import FileLock, Timeout

from framer.errors import UserError
from framer.io import atomic_write_text, read_json, write_csv_rows, write_json

CONFIG = "config.yaml"
CURVES = "metrics.csv"  # Lightning's CSVLogger: per-step and per-epoch metrics
INFO = "run.json"
RESULTS = "results.json"
OLD_RESULTS = "metrics.json"  # the name of results.json in runs made before it was renamed (read only)
PREDICTIONS = {"final": "predictions.csv", "best": "predictions_best.csv"}
CHECKPOINTS = "checkpoints"
LAST = "last.ckpt"
FIGURES = "figures"
LOCK_FILE = ".framer.lock"
VERSION_PREFIX = "version_"
CELL = "cell.json"
FAILED = "FAILED"
LAUNCH_LOG = "launch.log"
MANIFEST = "manifest.json"
#: files only a run directory has (a checkpoint's grandparent holding one of them is its run directory)
RUN_MARKERS = (CONFIG, INFO, CURVES)
#: the test metrics that make a run finished: the final (SWA) model's, else the best-val checkpoint's
FINISHED_METRICS = ("test/mae", "test_best/mae")


class RunDirectoryBusy(UserError, RuntimeError):
    """Another process holds the run directory's lock."""


def claim_numbered_dir(root: str | os.PathLike, prefix: str = "") -> Path:
    """Create and return the next free ``<root>/<prefix><n>`` (atomic ``mkdir``: concurrent callers get distinct n)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    pattern = re.compile(re.escape(prefix) + r"(\d+)")
    taken = [int(m.group(1)) for p in root.iterdir() if (m := pattern.fullmatch(p.name))]
    n = max(taken, default=-1) + 1
    while True:
        try:
            (root / f"{prefix}{n}").mkdir()
            return root / f"{prefix}{n}"
        except FileExistsError:
            n += 1


def _in_dir(*parts: str) -> property:
    """A read-only attribute: the path ``parts`` inside the directory."""
    return property(lambda self: self.path.joinpath(*parts))


@dataclass(frozen=True)
class _Directory:
    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def name(self) -> str:
        return self.path.name


class RunDir(_Directory):
    """One ``fit``'s directory, ``<save_dir>/<run_name>/version_<n>/`` (or an evaluation's ``<run>/test/<n>/``)."""

    config = _in_dir(CONFIG)
    curves = _in_dir(CURVES)
    info = _in_dir(INFO)
    results = _in_dir(RESULTS)
    checkpoints = _in_dir(CHECKPOINTS)
    last_checkpoint = _in_dir(CHECKPOINTS, LAST)
    figures = _in_dir(FIGURES)

    def predictions(self, which: Literal["final", "best"] = "final") -> Path:
        return self.path / PREDICTIONS[which]

    def is_run(self) -> bool:
        """Whether the directory holds a run (one of :data:`RUN_MARKERS` or checkpoints)."""
        return any((self.path / name).is_file() for name in RUN_MARKERS) or self.checkpoints.is_dir()

    # ---- writing (global rank 0 only; every write is atomic)
    def write_results(self, summary: Mapping[str, Any]) -> Path:
        return write_json(self.results, summary)

    def write_predictions(self, rows: Iterable[Iterable[Any]], which: Literal["final", "best"] = "final") -> Path:
        return write_csv_rows(self.predictions(which), ("id", "target", "prediction"), rows)

    def update_info(self, facts: Mapping[str, Any]) -> Path:
        """Merge ``facts`` into ``run.json`` (later values win)."""
        return write_json(self.info, {**self.read_info(), **facts})

    # ---- reading
    def read_info(self) -> dict[str, Any]:
        return read_json(self.info)

    def read_results(self) -> dict[str, Any] | None:
        """``results.json`` (``metrics.json`` in runs made before it was renamed); None when absent or unreadable."""
        found = [self.path / name for name in (RESULTS, OLD_RESULTS) if (self.path / name).is_file()]
        return (read_json(found[0]) or None) if found else None

    def metric(self, name: str, results: Mapping[str, Any] | None = None) -> float:
        """A final test metric (e.g. ``test/mae``) from the results; NaN when absent or not a number."""
        results = self.read_results() if results is None else results
        value = ((results or {}).get("metrics") or {}).get(name)
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan

    @property
    def finished(self) -> bool:
        """The run's results hold a finite test MAE."""
        results = self.read_results()
        return results is not None and any(math.isfinite(self.metric(k, results)) for k in FINISHED_METRICS)

    # ---- evaluations and the lock
    def new_evaluation_dir(self, subcommand: str) -> Path:
        """A new ``<run>/<subcommand>/<n>/`` for the outputs of ``test``, ``validate`` or ``predict``."""
        return claim_numbered_dir(self.path / subcommand)

    def lock(self) -> FileLock:
        """The run's exclusive lock (``.framer.lock``), taken at once and held until released or the process ends;
        :class:`RunDirectoryBusy` when another process holds it."""
        self.path.mkdir(parents=True, exist_ok=True)
        path = self.path / LOCK_FILE
        lock = FileLock(path)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise RunDirectoryBusy(
                f"run directory {self.path} is in use by another running process (it holds {path}); "
                "wait for it to end or stop it before resuming this run"
            ) from None
        return lock

    @classmethod
    def of_checkpoint(cls, ckpt: str | os.PathLike) -> RunDir | None:
        """The run a local checkpoint ``<run dir>/checkpoints/<name>.ckpt`` belongs to, else None."""
        text = os.fspath(ckpt)
        if "://" in text:
            return None
        path = Path(text)
        run = cls(path.parent.parent)
        return run if path.parent.name == CHECKPOINTS and any((run.path / n).is_file() for n in RUN_MARKERS) else None


class RunRoot(_Directory):
    """``<save_dir>/<run_name>/``: the versions of one run name and the files of the launcher that started it."""

    launch_log = _in_dir(LAUNCH_LOG)

    def claim(self) -> RunDir:
        """A new ``version_<n>`` (atomic ``mkdir``: concurrent runs of one name never share a directory)."""
        return RunDir(claim_numbered_dir(self.path, VERSION_PREFIX))

    def versions(self) -> list[RunDir]:
        """The run directories directly below the root, oldest first (``version_<n>`` by n, after any other)."""
        if not self.path.is_dir():
            return []
        found = []
        for child in self.path.iterdir():
            match = re.fullmatch(re.escape(VERSION_PREFIX) + r"(\d+)", child.name)
            run = RunDir(child)
            if child.is_dir() and (match or run.is_run()):
                found.append((int(match.group(1)) if match else -1, child.name, run))
        return [run for *_, run in sorted(found, key=lambda item: item[:2])]

    def latest(self) -> RunDir | None:
        return next(reversed(self.versions()), None)

    def latest_finished(self) -> RunDir | None:
        """The newest version whose results hold a test MAE."""
        return next((run for run in reversed(self.versions()) if run.finished), None)

    @property
    def finished(self) -> bool:
        return self.latest_finished() is not None

    def last_checkpoint(self) -> tuple[Path, RunDir] | None:
        """``last.ckpt`` of the newest version that has one (``last-v1.ckpt`` and such count), with its version."""
        for run in reversed(self.versions()):
            found = sorted(run.checkpoints.glob("last*.ckpt"), key=_mtime)
            if found:
                return found[-1], run
        return None

    def status(self) -> Literal["finished", "failed", "incomplete", "missing"]:
        if not self.path.is_dir():
            return "missing"
        if self.finished:
            return "finished"
        return "failed" if (self.path / FAILED).is_file() else "incomplete"

    # ---- the launcher's files
    def mark_failed(self, message: str) -> Path:
        return atomic_write_text(self.path / FAILED, message.rstrip("\n") + "\n")

    def clear_failed(self) -> None:
        (self.path / FAILED).unlink(missing_ok=True)

    def write_cell(self, cell: Mapping[str, Any]) -> Path:
        return write_json(self.path / CELL, cell)

    def read_cell(self) -> dict[str, Any]:
        return read_json(self.path / CELL)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:  # replaced or removed by a run writing there right now
        return -math.inf


def find_roots(runs_dir: str | os.PathLike, marker: str = CELL) -> list[RunRoot]:
    """Every run root below ``runs_dir`` that holds ``marker`` (by default the ``cell.json`` of framer.reproduce)."""
    return [RunRoot(path.parent) for path in sorted(Path(runs_dir).rglob(marker))]


def write_manifest(runs_dir: str | os.PathLike, manifest: Mapping[str, Any]) -> Path:
    return write_json(Path(runs_dir) / MANIFEST, manifest)


def read_manifest(runs_dir: str | os.PathLike) -> dict[str, Any]:
    """``<runs>/manifest.json`` ({} when absent)."""
    return read_json(Path(runs_dir) / MANIFEST)


def resolve(path: str | os.PathLike) -> RunDir | None:
    """The run directory ``path`` names: itself when it holds a run, else the newest version of a run root."""
    run = RunDir(Path(path))
    if run.is_run():
        return run
    return RunRoot(Path(path)).latest()
