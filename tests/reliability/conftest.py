"""Fixtures of the reliability tests: a small embedded data set built once, run directories."""

from __future__ import annotations

from pathlib import Path

import pytest
from reliability_helpers import STANDIN_MODULES


@pytest.fixture(autouse=True)
def allow_standins(monkeypatch):
    """Let configs and checkpoints name the stand-in classes (not under framer, torch or lightning)."""
    monkeypatch.setenv("FRAMER_ALLOWED_MODULES", STANDIN_MODULES)


@pytest.fixture(scope="session")
def ewald_root(tmp_path_factory) -> Path:
    """A data root whose Ewald cache (the DATA_ARGS data set) is built once per session."""
    from framer.data import EwaldDataModule

    root = tmp_path_factory.mktemp("ewald-data")
    EwaldDataModule(num_crystals=32, max_atoms=6, batch_size=4, build_workers=0, data_dir=str(root)).prepare_data()
    return root


@pytest.fixture
def workdir(tmp_path, monkeypatch, ewald_root) -> Path:
    """Run in ``tmp_path`` with the shared Ewald cache (read-only use) and a private MLflow database."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FRAMER_DATA_DIR", str(ewald_root))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    monkeypatch.delenv("FRAMER_DEBUG", raising=False)
    return tmp_path


@pytest.fixture
def fresh_data(tmp_path) -> Path:
    """A copy of nothing: an empty data root (for tests that build or break caches)."""
    root = tmp_path / "data"
    root.mkdir()
    return root


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory) -> Path:
    """An empty MLflow SQLite database with its schema, built once (its migrations take seconds): copy it to use it."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments(max_results=1)
    return path
