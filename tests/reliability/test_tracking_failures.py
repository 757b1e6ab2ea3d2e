"""A tracking backend that cannot be used is found before training, within seconds, and reported in one line (or, when
asked for, a warning and a run tracked in its CSV files only): an MLflow server nobody answers for, a corrupt SQLite
file, a read-only one."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess

import pytest
from reliability_helpers import fit_args
from test_untrusted_files import one_error

from framer.cli import main

NOBODY = "http://127.0.0.1:9"  # the discard port: nothing listens there


@pytest.mark.timeout(60)  # on main this stalled for about 9 minutes (MLflow's default retries)
def test_an_unreachable_server_is_one_line_before_anything_is_written(workdir, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", NOBODY)
    line = one_error(fit_args("remote"), capsys)
    assert f"MLflow tracking server {NOBODY} cannot be reached" in line and "Connection refused" in line
    assert not (workdir / "runs").exists()


@pytest.mark.timeout(60)
def test_an_unreachable_server_can_fall_back_to_csv_tracking(workdir, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", NOBODY)
    with pytest.warns(UserWarning, match="tracking this run in its CSV files only"):
        main(fit_args("fallback", "--tracking.mlflow_required=false", "--test_after_fit=false", epochs=1))
    run = workdir / "runs" / "fallback" / "version_0"
    assert (run / "metrics.csv").read_text().count("\n") > 1
    assert "mlflow_run_id" not in json.loads((run / "run.json").read_text())


def test_a_corrupt_sqlite_file_is_one_line(workdir, capsys, monkeypatch):
    database = workdir / "broken.db"
    database.write_bytes(b"this is not a database\n" * 100)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{database}")
    line = one_error(fit_args("corrupt"), capsys)
    assert f"MLflow tracking database {database} cannot be used" in line and "not a database" in line
    assert not (workdir / "runs").exists()


@pytest.fixture
def read_only_database(workdir):
    """A valid SQLite file this process cannot write (chmod, plus the immutable flag when running as root)."""
    database = workdir / "readonly.db"
    with sqlite3.connect(database) as connection:
        connection.execute("CREATE TABLE t (x INTEGER)")
    connection.close()
    database.chmod(0o444)
    immutable = False
    if os.geteuid() == 0:  # root writes through file modes
        chattr = shutil.which("chattr")
        if chattr is None or subprocess.run([chattr, "+i", str(database)], capture_output=True).returncode:
            pytest.skip("running as root without chattr +i: cannot make a file read-only")
        immutable = True
    yield database
    if immutable:
        subprocess.run([shutil.which("chattr"), "-i", str(database)], check=True)


def test_a_read_only_sqlite_file_is_one_line(workdir, capsys, monkeypatch, read_only_database):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{read_only_database}")
    line = one_error(fit_args("readonly"), capsys)
    assert f"MLflow tracking database {read_only_database} cannot be" in line
    assert not (workdir / "runs").exists()


def test_a_trainer_setting_lightning_refuses_leaves_no_running_mlflow_run(workdir, capsys, mlflow_template):
    """The MLflow run is created with the loggers, before Lightning builds the trainer: a setting the trainer refuses
    ends that run FAILED, and the error is one line."""
    (workdir / "mlruns").mkdir()
    shutil.copy(mlflow_template, workdir / "mlruns" / "mlflow.db")
    line = one_error(fit_args("refused", "--trainer.devices=0"), capsys)
    assert "devices='0'" in line
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("framer").experiment_id])
    assert [run.info.status for run in runs] == ["FAILED"]
