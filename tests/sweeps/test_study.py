"""Studies that train: a 3-trial study on the embedded data, a failing trial, parallel workers, DDP trials."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from matplotlib.image import imread
from optuna.trial import TrialState

from framer.launch import resolved_config
from framer.tune import tune
from framer.tune.__main__ import main as tune_main
from framer.tune.storage import load_study_from_dir

REPO = Path(__file__).resolve().parents[2]

SMOKE = REPO / "sweeps" / "smoke.yaml"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def mlflow_runs(uri: str, experiment: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    trials = sorted((r for r in runs if r.data.tags.get("framer.role") == "trial"), key=lambda r: r.info.run_name)
    parents = [r for r in runs if r.data.tags.get("framer.role") == "study"]
    return client, trials, parents


def small_sweep(tmp_path, name: str, **changes) -> str:
    """The smoke sweep under another name with ``changes`` applied."""
    raw = yaml.safe_load(SMOKE.read_text())
    raw.update(study=name, **changes)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_three_trial_study_journal_and_mlflow(sweep_env):
    tmp_path, uri = sweep_env
    study_dir = tmp_path / "study"
    study = tune(SMOKE, study_dir=study_dir)

    assert (study_dir / "journal.log").is_file()
    assert len(study.trials) == 3 and all(t.state in FINISHED for t in study.trials)
    assert any(t.state == TrialState.COMPLETE for t in study.trials)

    client, trials, parents = mlflow_runs(uri, "smoke")
    assert len(parents) == 1 and len(trials) == 3
    for run, trial in zip(trials, study.trials):
        assert run.info.run_name == f"trial_{trial.number:04d}"
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert run.data.params["model.init_args.model.init_args.frame"] == str(trial.params[
            "model.init_args.model.init_args.frame"])  # fmt: skip
        assert "val/mae" in run.data.metrics  # Lightning's curve, logged into the same run
        assert "optuna/val/mae" in run.data.metrics
        assert run.data.tags["optuna.state"] == trial.state.name
        assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"config.yaml", "run.json"}
        assert run.info.status == ("FINISHED" if trial.state == TrialState.COMPLETE else "KILLED")

    for trial in study.trials:  # the value is the best epoch's (ModelCheckpoint's best score on val/mae)
        assert trial.intermediate_values and trial.user_attrs["run_dir"].endswith(f"trial_{trial.number:04d}/version_0")
        if trial.state == TrialState.COMPLETE:
            assert trial.value == min(trial.intermediate_values.values())
    best = study.best_trial
    best_yaml = study_dir / "best.yaml"
    config = yaml.safe_load(best_yaml.read_text())
    frame = config["model"]["init_args"]["model"]["init_args"]["frame"]
    assert frame == best.params["model.init_args.model.init_args.frame"]
    assert config["model"]["init_args"]["optimizer"]["init_args"]["lr"] == pytest.approx(
        best.params["model.init_args.optimizer.init_args.lr"]
    )
    assert config["trainer"]["max_epochs"] == 2
    assert "optuna" not in json.dumps(config)  # no trial plumbing (run ids, tags) in the reusable config
    resolved = yaml.safe_load(resolved_config([str(best_yaml)]))  # the CLI parses it again
    assert resolved["model"] == config["model"]

    summary = json.loads((study_dir / "summary.json").read_text())
    assert summary["best"]["number"] == best.number
    history = study_dir / "figures" / "history.png"
    assert imread(history).shape[:2] == (540, 840)  # the 7 x 4.5 in figure at 120 dpi
    assert "history.png" in {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    for run in trials:  # each trial's learning curves, logged into its run
        assert [a.path for a in client.list_artifacts(run.info.run_id, "figures")] == ["figures/learning_curves.png"]
    assert (study_dir / "trials.csv").is_file()
    assert (tmp_path / "mlruns" / "artifacts").is_dir()

    again = tune(SMOKE, study_dir=study_dir, figures=False)  # resuming a finished study runs nothing
    assert len(again.trials) == 3
    assert len(load_study_from_dir(study_dir).trials) == 3

    history.unlink()
    tune_main(["--sweep", str(SMOKE), "--study-dir", str(study_dir), "--figures-only"])  # redraws, runs nothing
    assert imread(history).shape[:2] == (540, 840) and len(load_study_from_dir(study_dir).trials) == 3


def test_failed_trial_is_recorded_and_study_continues(sweep_env):
    tmp_path, uri = sweep_env
    sweep = small_sweep(
        tmp_path,
        "failing",
        search_space={"model.init_args.model.init_args.frame": {"type": "categorical", "choices": ["bogus", "max"]}},
        sampler={"type": "grid", "seed": 0},
        pruner={"type": "none"},
        n_trials=2,
    )
    study = tune(sweep, study_dir=tmp_path / "study", figures=False)
    states = {t.params["model.init_args.model.init_args.frame"]: t for t in study.trials}
    assert states["bogus"].state == TrialState.FAIL
    assert "bogus" in states["bogus"].user_attrs["error"]
    assert states["max"].state == TrialState.COMPLETE
    _, trials, _ = mlflow_runs(uri, "failing")
    status = {r.data.params["model.init_args.model.init_args.frame"]: r.info.status for r in trials}
    assert status == {"bogus": "FAILED", "max": "FINISHED"}
    assert (tmp_path / "study" / "best.yaml").is_file()


def test_sigterm_during_a_ddp_trial_stops_the_worker_and_leaves_the_trial_to_requeue(sweep_env, monkeypatch):
    """The launcher passes a worker's SIGTERM on to the trial's processes (they save last.ckpt and exit 143);
    the worker then stops as a killed one would, so the study's next start requeues the trial."""
    from framer.launch import EXIT_SIGTERM, Outcome
    from framer.tune import objective

    tmp_path, _ = sweep_env
    started = []
    monkeypatch.setattr(objective, "run_subprocess", lambda spec, log, **kw: started.append(spec) or Outcome(143))
    sweep = small_sweep(tmp_path, "stopped", n_trials=2)
    with pytest.raises(SystemExit) as stopped:
        tune(sweep, study_dir=tmp_path / "study", devices_per_trial=2, mlflow=False, figures=False)
    assert stopped.value.code == EXIT_SIGTERM and len(started) == 1
    assert [t.state for t in load_study_from_dir(tmp_path / "study").trials] == [TrialState.RUNNING]
    args = " ".join(started[0].args())
    assert f"--config {REPO / 'conf' / 'trainer' / 'ddp.yaml'} " in args  # found from any directory
    assert "framer.tune.callbacks.TrialProgress" in args  # rank 0 writes progress; the driver reports to Optuna
    assert "journal" not in args and "trial_id" not in args  # the trial's processes never open the study


def worker(sweep: str, study_dir, env) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "framer.tune", "--sweep", sweep, "--study-dir", str(study_dir), "--no-figures"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_parallel_workers_share_the_budget(sweep_env):
    tmp_path, _ = sweep_env
    sweep = small_sweep(tmp_path, "parallel", n_trials=4, pruner={"type": "none"})
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [worker(sweep, tmp_path / "study", env) for _ in range(2)]
    outputs = [p.communicate(timeout=1200)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    study = optuna.load_study(study_name="parallel", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "study" / "journal.log"))))  # fmt: skip
    finished = [t for t in study.trials if t.state.is_finished()]
    assert 4 <= len(finished) <= 5  # MaxTrialsCallback-style budgets can overshoot by one when workers race
    workers = {t.user_attrs["worker"] for t in study.trials}
    assert len(workers) == 2  # both workers ran trials


@pytest.mark.slow
def test_ddp_trials_over_two_cpu_processes(sweep_env):
    tmp_path, uri = sweep_env
    space = {"model.init_args.optimizer.init_args.lr": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True}}
    fixed = {**yaml.safe_load(SMOKE.read_text())["fixed"], "model.init_args.model.init_args.frame": "max"}
    sweep = small_sweep(tmp_path, "ddp", n_trials=2, search_space=space, fixed=fixed, pruner={"type": "none"})
    study = tune(sweep, study_dir=tmp_path / "study", devices_per_trial=2, figures=False, trial_timeout=900)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2, [
        t.user_attrs.get("error") for t in study.trials
    ]
    trials_dir = tmp_path / "study" / "trials"
    started = json.loads((trials_dir / "trial_0000.progress.jsonl").read_text().splitlines()[0])
    assert started["world_size"] == 2 and started["run_dir"] == study.trials[0].user_attrs["run_dir"]
    for trial in study.trials:  # rank 0 wrote every epoch's value; the driver reported them and took the best
        assert sorted(trial.intermediate_values) == [0, 1]
        assert trial.value == min(trial.intermediate_values.values())
    trial_yaml = yaml.safe_load((trials_dir / "trial_0000.yaml").read_text())
    assert trial_yaml["model"]["init_args"]["optimizer"]["init_args"]["lr"] == study.trials[0].params[
        "model.init_args.optimizer.init_args.lr"]  # fmt: skip
    _, trials, _ = mlflow_runs(uri, "ddp")
    assert len(trials) == 2 and all("val/mae" in r.data.metrics for r in trials)
    assert {r.info.run_id for r in trials} == {t.user_attrs["mlflow_run_id"] for t in study.trials}
    assert (tmp_path / "study" / "best.yaml").is_file()

    # a pruned DDP trial is stopped by the driver (SIGTERM to its processes) within a poll interval, not at the end
    fixed = {**fixed, "trainer.max_epochs": 20, "model.init_args.swa_epochs": 1}
    pruned = small_sweep(tmp_path, "ddp-pruned", n_trials=1, search_space=space, fixed=fixed,
                         pruner={"type": "threshold", "upper": 0.0})  # fmt: skip
    study = tune(pruned, study_dir=tmp_path / "pruned", devices_per_trial=2, figures=False, trial_timeout=900)
    trial = study.trials[0]
    assert trial.state == TrialState.PRUNED and list(trial.intermediate_values) == [0]
    assert "framer: run stopped by its caller (poll)" in (tmp_path / "pruned" / "trials" / "trial_0000.log").read_text()
    _, trials, _ = mlflow_runs(uri, "ddp-pruned")
    assert [r.info.status for r in trials] == ["KILLED"]
