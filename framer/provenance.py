"""Where results come from: framer's version and the git commit of the checkout that produced them.

The commit is read from the repository holding this package, never from the current directory, so a run started
from elsewhere still records the code it ran.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def _git(*args: str) -> str | None:
    """Output of ``git -C <package dir> <args>``, or None when git or the repository is unavailable."""
    try:
        done = subprocess.run(
            ["git", "-C", str(PACKAGE_DIR), *args], capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def git_commit(short: bool = False) -> dict[str, str | bool]:
    """``{"commit": hash, "dirty": tracked files changed}`` of framer's checkout; ``{}`` outside a git checkout
    (e.g. an installed wheel)."""
    commit = _git("rev-parse", *(["--short"] if short else []), "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no")
    if not commit or status is None:
        return {}
    return {"commit": commit, "dirty": bool(status)}


def framer_version() -> str:
    """The installed framer's version; ``0+unknown`` for a checkout on the path that is not installed."""
    try:
        return importlib.metadata.version("framer")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"
