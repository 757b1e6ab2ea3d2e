"""A trained run's directory is never changed by ``test`` or ``predict``, never written by two processes at once, and a
smoke run writes no file at all."""

from __future__ import annotations

import csv
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from reliability_helpers import CONF, DATA_ARGS, STEPS_PER_EPOCH, callback_arg, cli_env, fit_args
from test_untrusted_files import one_error

from framer.cli import main
from framer.rundir import LOCK_FILE


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def mlflow_runs(workdir: Path) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}")
    return client.search_runs([client.get_experiment_by_name("framer").experiment_id])


def test_test_and_predict_never_change_a_finished_run(workdir, capsys, mlflow_template):
    (workdir / "mlruns").mkdir()
    shutil.copy(mlflow_template, workdir / "mlruns" / "mlflow.db")  # the workdir's database, schema made
    # a run tracked in MLflow, resumed once: its config.yaml now names its version, as the README's commands use it
    main(fit_args("done", "--test_after_fit=false", epochs=1))
    main(fit_args("done", "--ckpt_path=last", epochs=2))
    run = workdir / "runs" / "done" / "version_0"
    assert "version: version_0" in (run / "config.yaml").read_text()
    before, runs_before = snapshot(run), mlflow_runs(workdir)
    ckpt = run / "checkpoints" / "last.ckpt"

    main(["predict", "--config", str(run / "config.yaml"), "--ckpt_path", str(ckpt)])
    main(["test", "--config", str(run / "config.yaml"), "--ckpt_path", str(ckpt)])

    after = snapshot(run)
    assert {name: after[name] for name in before} == before  # every file of the run, byte for byte
    new = sorted(set(after) - set(before))
    assert all(name.startswith(("predict/0/", "test/0/")) for name in new), new
    with (run / "predict" / "0" / "predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert rows and list(rows[0]) == ["id", "prediction"]
    assert (run / "test" / "0" / "results.json").is_file() and (run / "test" / "0" / "predictions.csv").is_file()
    assert [r.info.run_id for r in mlflow_runs(workdir)] == [r.info.run_id for r in runs_before]  # no MLflow run
    assert sorted(p.name for p in (workdir / "runs" / "done").iterdir()) == ["version_0"]
    capsys.readouterr()


def test_a_second_resume_of_a_running_run_is_refused_and_a_killed_run_leaves_no_stale_lock(
    tmp_path, ewald_root, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FRAMER_DATA_DIR", str(ewald_root))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    args = fit_args("busy", "--tracking.mlflow=false", "--checkpoint.every_n_train_steps=4")
    marker = tmp_path / "paused"
    pause = callback_arg("reliability_standins.PauseAt", step=10, marker=str(marker))
    log = (tmp_path / "first.log").open("w")
    first = subprocess.Popen(
        [sys.executable, "-m", "framer.cli", *args, pause], cwd=tmp_path, env=cli_env(tmp_path, ewald_root),
        stdout=log, stderr=log,
    )  # fmt: skip
    try:
        while not marker.exists():
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            time.sleep(0.1)
        run = tmp_path / "runs" / "busy" / "version_0"
        before = snapshot(run)
        line = one_error([*args, "--ckpt_path=last"], capsys)  # the same run, while it runs
        assert f"run directory {Path('runs/busy/version_0')} is in use by another running process" in line
        assert snapshot(run) == before  # the refused resume wrote nothing
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
        log.close()
    assert (run / LOCK_FILE).exists()  # left behind by the killed process, but not held by anyone
    main([*args, "--ckpt_path=last"])  # resumes in place
    assert json.loads((run / "results.json").read_text())["global_step"] == 3 * STEPS_PER_EPOCH
    assert sorted(p.name for p in run.parent.iterdir()) == ["version_0"]


def test_the_smoke_config_writes_no_file(tmp_path, ewald_root, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FRAMER_DATA_DIR", str(ewald_root))  # the data cache lives in the data root, as always
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    smoke = ["--config", str(CONF / "data" / "ewald.yaml"), "--config", str(CONF / "debug" / "smoke.yaml")]
    main(["fit", "--config", str(CONF / "default.yaml"), *smoke, *DATA_ARGS])
    assert sorted(tmp_path.iterdir()) == []
