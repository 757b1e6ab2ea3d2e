"""The run directory: where a run's files go, and the lock that keeps two processes out of one run at once.

- ``fit`` writes ``<save_dir>/<run_name>/version_<n>/`` (config, metrics, checkpoints, results); a new run claims
  the next free ``version_<n>`` with an atomic ``mkdir``, ``fit --ckpt_path last`` continues in its directory.
- ``test``, ``validate`` and ``predict`` never change a run's files: each writes into a new numbered sub-directory
  ``<run dir>/<subcommand>/<n>/`` of the run the checkpoint belongs to (:func:`evaluation_dir`).
- A ``fit`` holds :class:`RunLock` on its directory for as long as it runs, so a second process resuming the same run
  is refused. The lock is an OS file lock (``filelock``): released on any exit, also SIGKILL, so a crashed run never
  leaves a stale lock behind (the empty lock file ``.framer.lock`` stays).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from filelock import FileLock, Timeout

from framer.errors import UserError

LOCK_FILE = ".framer.lock"
CHECKPOINT_DIR = "checkpoints"
#: files only a run directory has (a checkpoint's grandparent holding one of them is its run directory)
RUN_MARKERS = ("config.yaml", "run.json", "metrics.csv")


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


def run_dir_of_checkpoint(ckpt: str | os.PathLike) -> Path | None:
    """The run directory a local checkpoint ``<run dir>/checkpoints/<name>.ckpt`` belongs to, else None."""
    text = os.fspath(ckpt)
    if "://" in text:
        return None
    path = Path(text)
    directory = path.parent.parent
    if path.parent.name == CHECKPOINT_DIR and any((directory / name).is_file() for name in RUN_MARKERS):
        return directory
    return None


def evaluation_dir(run: Path, subcommand: str) -> Path:
    """A new ``<run>/<subcommand>/<n>/`` for the outputs of ``test``, ``validate`` or ``predict``."""
    return claim_numbered_dir(run / subcommand)


class RunLock:
    """An exclusive lock on a run directory, held from :meth:`acquire` to :meth:`release` (or the process's end).

    Args:
        directory: The run directory (the lock file ``.framer.lock`` is created in it).
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_FILE
        self._lock = FileLock(self.path)

    def acquire(self) -> RunLock:
        """Take the lock at once or raise :class:`RunDirectoryBusy`."""
        self.directory.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            raise RunDirectoryBusy(
                f"run directory {self.directory} is in use by another running process (it holds {self.path}); "
                "wait for it to end or stop it before resuming this run"
            ) from None
        return self

    def release(self) -> None:
        if self._lock.is_locked:
            self._lock.release(force=True)

    @property
    def is_locked(self) -> bool:
        return self._lock.is_locked

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
