"""``python -m framer.predict`` end to end, the prediction writer, and tracking defaults (never the file store)."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, MLFlowLogger
from training_standins import TinyDataModule, TinyModel, quiet_trainer_kwargs, subprocess_env

from framer.io import atomic_write_text
from framer.module import CrystalRegressor
from framer.predict import main as predict_main
from framer.predictor import collect_inputs
from framer.tracking import (
    Tracking,
    TrackingError,
    artifact_location,
    param_key,
    resolve_tracking_uri,
    sqlite_path,
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("ckpt")
    pl.seed_everything(5)
    module = CrystalRegressor(TinyModel(hidden=8), swa_epochs=1)
    callback = ModelCheckpoint(dirpath=directory, save_last=True)
    trainer = pl.Trainer(**quiet_trainer_kwargs(max_epochs=2, callbacks=[callback], enable_checkpointing=True))
    trainer.fit(module, datamodule=TinyDataModule(num_crystals=30))
    return directory / "last.ckpt"


@pytest.fixture
def structures(tmp_path) -> Path:
    from pymatgen.core import Lattice, Structure

    folder = tmp_path / "structures"
    (folder / "sub").mkdir(parents=True)
    nacl = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    nacl.to(filename=str(folder / "NaCl.cif"))
    Structure(Lattice.cubic(3.0), ["Fe"], [[0, 0, 0]]).to(filename=str(folder / "sub" / "POSCAR"), fmt="poscar")
    (folder / "broken.cif").write_text("data_broken\nthis is not a crystal\n")
    overlap = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.001, 0, 0]])
    overlap.to(filename=str(folder / "overlap.cif"))
    (folder / "notes.txt").write_text("ignored: not a structure file\n")
    return folder


def test_collect_inputs_finds_structure_files(structures):
    found = dict(collect_inputs([structures]))
    assert set(found) == {"NaCl", "broken", "overlap", "sub/POSCAR"}


def test_predict_folder_to_csv_skips_bad_files_by_name(checkpoint, structures, tmp_path, capsys):
    out = tmp_path / "preds.csv"
    assert predict_main(["--ckpt", str(checkpoint), "--inputs", str(structures), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "broken.cif" in err and "overlap.cif" in err and "Traceback" not in err
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert [r["id"] for r in rows] == ["NaCl", "sub/POSCAR"]
    # the numbers are the checkpoint's SWA predictions in physical units
    from framer.data import collate_structures
    from framer.data.structures import read_structure_file

    module = CrystalRegressor.load_from_checkpoint(checkpoint).eval()
    batch = collate_structures([read_structure_file(structures / "NaCl.cif")])
    with torch.no_grad():
        expected = float(module(batch, "swa"))
    assert float(rows[0]["prediction"]) == pytest.approx(expected, rel=1e-6)


def test_predict_user_errors(checkpoint, structures, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    for ckpt, inputs in [(tmp_path / "none.ckpt", structures), (checkpoint, tmp_path / "nowhere"), (checkpoint, empty)]:
        with pytest.raises(SystemExit) as exit_info:
            predict_main(["--ckpt", str(ckpt), "--inputs", str(inputs)])
        assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("framer: error:") == 3 and "Traceback" not in err


def test_predict_entry_point_as_a_subprocess(checkpoint, structures, tmp_path):
    out = tmp_path / "p.csv"
    inputs = ["--inputs", str(structures / "NaCl.cif"), "--out", str(out)]
    result = subprocess.run(
        [sys.executable, "-m", "framer.predict", "--ckpt", str(checkpoint), *inputs],
        env=subprocess_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert out.read_text().splitlines()[0] == "id,prediction"


def test_tracking_uri_defaults_to_sqlite_and_refuses_file_stores(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    uri = resolve_tracking_uri()
    assert uri == f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}" and (tmp_path / "mlruns").is_dir()
    for bad in ("./mlruns", "file:///tmp/mlruns", "mlruns"):
        with pytest.raises(TrackingError):
            resolve_tracking_uri(bad)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert resolve_tracking_uri("sqlite:///x.db") == "http://127.0.0.1:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    loggers = Tracking(run_name="r", save_dir=str(tmp_path / "runs")).loggers()
    assert isinstance(loggers[0], CSVLogger) and isinstance(loggers[1], MLFlowLogger)
    assert isinstance(Tracking(mlflow=False, save_dir=str(tmp_path / "runs")).loggers()[-1], CSVLogger)


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    atomic_write_text(target, "old")

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", fail)
    with pytest.raises(OSError):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_one_artifact_location_rule_and_sqlite_paths_read_by_sqlalchemy(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert sqlite_path("sqlite:///mlruns/mlflow.db") == Path("mlruns/mlflow.db")
    assert sqlite_path(f"sqlite:///{tmp_path}/db/x.db") == tmp_path / "db" / "x.db"
    for other in ("sqlite://", "sqlite:///:memory:", "postgresql+psycopg2://u:p@h/db", "http://127.0.0.1:5000"):
        assert sqlite_path(other) is None, other
    assert artifact_location("sqlite:///mlruns/mlflow.db") == (tmp_path / "mlruns" / "artifacts").as_uri()  # default
    assert artifact_location(f"sqlite:///{tmp_path}/db/x.db") == (tmp_path / "db" / "artifacts").as_uri()
    assert artifact_location("http://127.0.0.1:5000") is None  # the server keeps them
    assert artifact_location("http://127.0.0.1:5000", "here") == (tmp_path / "here").as_uri()
    assert artifact_location("sqlite:///x.db", "s3://bucket/a") == "s3://bucket/a"
    assert param_key("split/tr@in " + "x" * 300) == "split/tr_in " + "x" * 238


def test_a_fit_from_another_directory_keeps_artifacts_next_to_its_database(tmp_path, monkeypatch):
    """The CLI and the sweeps used to disagree: the CLI put artifacts in <cwd>/mlruns/artifacts whatever the URI."""
    db = tmp_path / "shared" / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    Tracking(run_name="r", save_dir=str(tmp_path / "runs"), experiment_name="e").loggers()
    from mlflow.tracking import MlflowClient

    experiment = MlflowClient(f"sqlite:///{db}").get_experiment_by_name("e")
    assert experiment.artifact_location == (tmp_path / "shared" / "artifacts").as_uri()
    assert not (tmp_path / "elsewhere" / "mlruns").exists()


def test_only_the_launching_process_claims_a_version_and_creates_the_mlflow_run(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("LOCAL_RANK", "1")  # a DDP child
    Tracking(run_name="r", save_dir=str(tmp_path / "runs")).loggers()  # (its MLflow logger is Lightning's dummy)
    assert not (tmp_path / "runs" / "r").exists() and client.get_experiment_by_name("framer") is None
    monkeypatch.setenv("LOCAL_RANK", "0")
    tracking = Tracking(run_name="r", save_dir=str(tmp_path / "runs"))
    csv_logger, mlflow_logger = tracking.loggers()
    assert (tmp_path / "runs" / "r" / "version_0").is_dir() and csv_logger.version == "version_0"
    (run,) = client.search_runs([client.get_experiment_by_name("framer").experiment_id])
    assert mlflow_logger.run_id == run.info.run_id == tracking.created_run[1] and run.info.status == "RUNNING"
    assert run.info.run_name == "r"
    tracking.fail_created_run()
    assert client.get_run(run.info.run_id).info.status == "FAILED"
    _, resumed = Tracking(run_name="r", save_dir=str(tmp_path / "runs"), version=0).loggers(run.info.run_id)
    assert resumed.run_id == run.info.run_id and len(client.search_runs([run.info.experiment_id])) == 1
