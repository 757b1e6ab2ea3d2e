"""Matbench: ids and folds as matbench makes them, the fold DataModule, recording with matbench's API."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
from matbench_fixture import write_fixture

from framer.matbench import MatbenchDataModule, tasks
from framer.matbench.__main__ import main as matbench_main

TASK = "matbench_log_kvrh"


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory):
    """40 crystals in matminer's format and folds by matbench's protocol."""
    return write_fixture(tmp_path_factory.mktemp("matminer"), TASK, n=30)


def test_ids_and_folds_match_the_matbench_package():
    assert tasks.mbids(TASK, 10987)[:2] == ["mb-log-kvrh-00001", "mb-log-kvrh-00002"]
    assert tasks.mbids("matbench_jdft2d", 636)[-1] == "mb-jdft2d-636"
    shipped = tasks.load_validation(TASK)  # from the matbench wheel
    ours = tasks.make_validation(TASK, tasks.task_metadata(TASK)["n_samples"])
    assert list(shipped) == [f"fold_{i}" for i in range(5)]
    for fold in shipped:
        assert shipped[fold]["test"] == ours[fold]["test"]
        assert shipped[fold]["train"] == ours[fold]["train"]
    assert [len(shipped[f]["test"]) for f in shipped] == [2198, 2198, 2197, 2197, 2197]


def test_fixture_loads_through_matminer(fixture_dir):
    home, _ = fixture_dir
    frame = tasks.load_frame(TASK, home)
    assert len(frame) == 30 and list(frame.columns) == ["structure", "target"]
    assert frame.index[0] == "mb-log-kvrh-01"
    assert type(frame["structure"].iloc[0]).__name__ == "Structure"
    with pytest.raises(tasks.MatbenchDataError, match="never downloads"):
        tasks.load_frame(TASK, home / "nowhere")


def test_fold_datamodule_nested_cv(fixture_dir, tmp_path):
    home, validation = fixture_dir
    folds = tasks.load_validation(TASK, validation)

    def module(fold, seed=0):
        dm = MatbenchDataModule(
            TASK, fold, 0.2, seed, str(home), str(validation), batch_size=4, data_dir=str(tmp_path / "data")
        )
        dm.setup("fit")
        return dm

    dm = module(2)
    ids = dm.split_ids()
    assert ids["test"] == folds["fold_2"]["test"]  # matbench's order, as record() needs
    assert sorted(ids["train"] + ids["val"]) == sorted(folds["fold_2"]["train"])  # val only from the fold's train
    assert not set(ids["val"]) & set(ids["test"])
    assert len(ids["val"]) == round(0.2 * len(folds["fold_2"]["train"]))
    assert dm.target_units == "log10(GPa)" and dm.dataset_name == TASK
    again = module(2)
    assert again.cache_status == "hit" and again.split_ids() == ids
    assert module(2, seed=1).split_ids()["val"] != ids["val"]
    batch = next(iter(dm.test_dataloader()))
    assert batch.ids == ids["test"][:1]
    with pytest.raises(ValueError):
        MatbenchDataModule(TASK, fold=5)


def test_record_with_matbench_api_and_results_file(fixture_dir, tmp_path):
    home, validation = fixture_dir
    import pandas as pd

    frame = tasks.load_frame(TASK, home)
    folds = tasks.load_validation(TASK, validation)
    bench = tasks.make_benchmark(TASK, frame, folds)
    for fold in range(5):
        test = folds[f"fold_{fold}"]["test"]
        truth = frame.loc[test, "target"].to_numpy()
        shuffled = pd.DataFrame({"id": test[::-1], "prediction": (truth + 0.5)[::-1]})  # any order is fine
        scores = tasks.record_fold(bench, TASK, fold, shuffled)
        assert scores["mae"] == pytest.approx(0.5)
    assert bench.tasks_map[TASK].all_folds_recorded
    assert bench.validate() == {}
    path = tasks.write_results(bench, tmp_path / "results.json.gz")
    data = tasks.read_results(path)  # gzip + matbench's hash
    assert data["benchmark_name"] == "matbench_v0.1"
    assert set(data["tasks"][TASK]["results"]) == {f"fold_{i}" for i in range(5)}
    with pytest.raises(ValueError, match="no prediction"):
        tasks.record_fold(tasks.make_benchmark(TASK, frame, folds), TASK, 0, shuffled.iloc[1:])


def runner_args(home, validation, out, *extra):
    return [
        "--task", TASK, "--data-home", str(home), "--validation-file", str(validation), "--out", str(out),
        "--launcher", "inprocess", "--batch-size", "8", "--test-batch-size", "8",
        "--config", "conf/default.yaml", "--config", "conf/trainer/cpu.yaml", "--config", "conf/debug/tiny_model.yaml",
        "--set", "trainer.max_epochs=2", "--set", "model.init_args.swa_epochs=1", "--set", "tracking.mlflow=false",
        *extra,
    ]  # fmt: skip


@pytest.fixture
def runner_env(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FRAMER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    return tmp_path


def test_runner_one_fold_records_and_resumes(fixture_dir, runner_env):
    home, validation = fixture_dir
    args = runner_args(home, validation, runner_env / "mb", "--folds", "1")
    assert matbench_main(args) == 0
    out = runner_env / "mb" / TASK
    scores = json.loads((out / "scores.json").read_text())
    assert scores["folds_recorded"] == ["fold_1"] and not scores["complete"]
    data = tasks.read_results(out / "results.json.gz")
    predicted = data["tasks"][TASK]["results"]["fold_1"]["data"]
    assert list(predicted) == tasks.load_validation(TASK, validation)["fold_1"]["test"]
    assert all(np.isfinite(v) for v in predicted.values())
    assert (next((out / "fold1").glob("version_*")) / "figures" / "parity.png").is_file()
    assert matbench_main(args) == 0  # finished: not trained again
    assert len(list((out / "fold1").glob("version_*"))) == 1


def test_runner_stops_with_exit_143_when_a_fold_is_preempted(fixture_dir, runner_env, monkeypatch):
    """Lightning's SIGTERMException (a SystemExit with code None) must not read as a finished fold."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    import framer.cli

    started = []

    def preempted(*args, **kwargs):
        started.append(kwargs.get("args"))
        raise SIGTERMException()

    monkeypatch.setattr(framer.cli, "FramerCLI", preempted)
    home, validation = fixture_dir
    assert matbench_main(runner_args(home, validation, runner_env / "mb", "--folds", "0", "1")) == 143
    assert len(started) == 1  # fold 1 never started
    assert not (runner_env / "mb" / TASK / "fold0" / "FAILED").exists()  # interrupted, not failed


@pytest.mark.slow
def test_runner_all_folds_complete_and_valid(fixture_dir, runner_env):
    home, validation = fixture_dir
    assert matbench_main(runner_args(home, validation, runner_env / "mb")) == 0
    out = runner_env / "mb" / TASK
    scores = json.loads((out / "scores.json").read_text())
    assert scores["complete"] and scores["folds_recorded"] == [f"fold_{i}" for i in range(5)]
    data = tasks.read_results(out / "results.json.gz")
    results = data["tasks"][TASK]["results"]
    folds = tasks.load_validation(TASK, validation)
    for fold in range(5):
        assert list(results[f"fold_{fold}"]["data"]) == folds[f"fold_{fold}"]["test"]
        assert results[f"fold_{fold}"]["parameters"]["test_weights"] in ("swa", "raw")
    with gzip.open(out / "results.json.gz", "rt") as f:  # a plain gzip JSON file
        assert json.load(f)["hash"] == data["hash"]
