"""Fixtures of the training tests: quiet CPU trainers, a private MLflow database and run directory per test."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
if str(HERE) not in sys.path:  # the stand-ins are imported by class path, also from subprocesses
    sys.path.insert(0, str(HERE))


#: the packages of the stand-ins, which configs name by class path (see framer.checkpoints)
STANDIN_MODULES = "training_standins,reliability_standins"


@pytest.fixture(autouse=True)
def allow_standins(monkeypatch):
    """Let configs and checkpoints name the stand-in classes (not under framer, torch or lightning)."""
    monkeypatch.setenv("FRAMER_ALLOWED_MODULES", STANDIN_MODULES)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """Run in a fresh directory with a private MLflow SQLite database."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    return tmp_path
