"""Two training processes started together on one empty data root (both build the cache) and one MLflow SQLite
database both finish: the cache is valid, MLflow holds both runs FINISHED with their metrics, and each run has its
own directory."""

from __future__ import annotations

import json
import subprocess
import sys

from reliability_helpers import cli_env, fit_args

from framer.data import EwaldDataModule
from framer.data.cache import read_cache


def test_two_runs_at_once_share_a_new_data_root_and_mlflow_database(tmp_path):
    data = tmp_path / "data"  # empty: no cache yet
    env = cli_env(tmp_path, data)
    # `python -m framer.cli fit ...`, except that each process, having found no cache and built it, waits for the
    # other before writing it: both really build and write the same cache at the same moment
    meet = f"import reliability_standins as s; s.meet_before_cache_write({str(tmp_path / 'met')!r}); import framer.cli"
    script = f"{meet}; framer.cli.main()"
    cmd = [sys.executable, "-c", script, *fit_args("twin", "--tracking.experiment_name=twins", epochs=2)]
    procs = []
    for i in range(2):
        log = (tmp_path / f"run{i}.log").open("w")
        procs.append((subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=log), log))
    for proc, log in procs:
        proc.wait(timeout=900)
        log.close()
    logs = [(tmp_path / f"run{i}.log").read_text() for i in range(2)]
    assert [p.returncode for p, _ in procs] == [0, 0], [text[-3000:] for text in logs]

    assert len(list((tmp_path / "met").iterdir())) == 2  # both processes built the cache
    cache = EwaldDataModule(num_crystals=32, max_atoms=6, data_dir=str(data)).cache_path()
    assert read_cache(cache).key  # complete, checksum verified
    assert not list(cache.parent.glob(".*.tmp"))  # no temporary file left behind
    dm = EwaldDataModule(num_crystals=32, max_atoms=6, data_dir=str(data))
    dm.prepare_data()
    assert dm.cache_status == "hit"

    runs = sorted((tmp_path / "runs" / "twin").iterdir())
    assert [r.name for r in runs] == ["version_0", "version_1"]
    infos = [json.loads((r / "run.json").read_text()) for r in runs]
    metrics = [json.loads((r / "results.json").read_text()) for r in runs]
    assert all(m["run_dir"] == str(r.resolve()) for m, r in zip(metrics, runs))
    assert all((r / "checkpoints" / "last.ckpt").is_file() for r in runs)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("twins")
    found = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_id for r in found) == sorted(i["mlflow_run_id"] for i in infos)
    for run in found:
        assert run.info.status == "FINISHED"
        assert {"test/mae", "val/mae", "train/loss"} <= set(run.data.metrics), run.data.metrics.keys()
    assert len({r.data.tags["run_dir"] for r in found}) == 2
