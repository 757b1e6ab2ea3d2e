"""DDP with two CPU processes (gloo) through the real entry point: fit, then test on one device, end to end."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from training_standins import subprocess_env

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "conf"


@pytest.mark.slow
def test_ddp_two_cpu_processes_fit_and_test(tmp_path):
    env = subprocess_env(tmp_path)
    env["FRAMER_DATA_DIR"] = str(tmp_path / "data")
    args = [
        "fit",
        "--config",
        str(CONF / "default.yaml"),
        "--config",
        str(CONF / "data" / "ewald.yaml"),
        "--config",
        str(CONF / "debug" / "tiny_model.yaml"),
        "--config",
        str(CONF / "trainer" / "ddp.yaml"),
        "--trainer.accelerator=cpu",
        "--trainer.devices=2",
        "--trainer.max_epochs=2",
        "--trainer.log_every_n_steps=1",
        "--trainer.enable_progress_bar=false",
        "--model.init_args.swa_epochs=1",
        "--data.init_args.num_crystals=40",
        "--data.init_args.max_atoms=8",
        "--data.init_args.build_workers=0",
        "--data.init_args.batch_size=4",
        "--tracking.run_name=ddp",
    ]
    result = subprocess.run(
        [sys.executable, "-m", "framer.cli", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in result.stdout + result.stderr
    run = tmp_path / "runs" / "ddp" / "version_0"
    metrics = json.loads((run / "results.json").read_text())
    assert {"test/mae", "test_best/mae", "best_val/mae"} <= set(metrics["metrics"])
    # 40 crystals -> 32 train, 4 per device per step on 2 devices: 4 steps per epoch
    assert metrics["global_step"] == 8 and metrics["swa_steps"] == 4
    with (run / "predictions.csv").open() as f:
        rows = list(csv.DictReader(f))
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) == metrics["n_test"] == 4  # the whole test split, once: no padding
    mae = sum(abs(float(r["prediction"]) - float(r["target"])) for r in rows) / len(rows)
    assert mae == pytest.approx(metrics["metrics"]["test/mae"], rel=1e-5)
    assert not (tmp_path / "runs" / "ddp" / "version_1").exists()  # both ranks logged into one run
    # one MLflow run, created by the launching process before Lightning spawned rank 1, and ended FINISHED
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    (mlrun,) = client.search_runs([client.get_experiment_by_name("framer").experiment_id])
    assert mlrun.info.run_id == json.loads((run / "run.json").read_text())["mlflow_run_id"]
    assert mlrun.info.status == "FINISHED" and "test/mae" in mlrun.data.metrics
