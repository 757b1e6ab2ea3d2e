"""Fixtures of the sweep tests: a private data cache, MLflow database and working directory per test."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def sweep_env(tmp_path, monkeypatch):
    """Run in ``tmp_path`` with the Ewald cache and an MLflow SQLite database there."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FRAMER_DATA_DIR", str(tmp_path / "data"))
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return tmp_path, uri
