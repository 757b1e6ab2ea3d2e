"""The command line end to end: every dataset config, result files, MLflow, resume, print_config, user errors."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from training_standins import subprocess_env

from framer.cli import FramerCLI, main

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "conf"
SMOKE = ["--config", str(CONF / "debug" / "smoke.yaml")]
STANDINS = [
    "--model.init_args.model",
    "training_standins.TinyModel",
    "--model.init_args.model.init_args.hidden",
    "8",
    "--data",
    "training_standins.TinyDataModule",
    "--data.init_args.num_crystals",
    "40",
    "--data.init_args.batch_size",
    "8",
]


def fit_args(*extra: str) -> list[str]:
    return ["fit", "--config", str(CONF / "default.yaml"), *extra]


@pytest.fixture
def raw_data(tmp_path, monkeypatch):
    """Fixture files in the published formats under $FRAMER_DATA_DIR/raw, plus a custom folder."""
    from tests.data.fakes import fake_dft3d_entries, fake_megnet_entries, write_jarvis_zip, write_moduli_pickles

    root = tmp_path / "data"
    raw = root / "raw"
    write_jarvis_zip(raw, "megnet", fake_megnet_entries(30, seed=7))
    write_jarvis_zip(raw, "dft_3d_2021", fake_dft3d_entries(60, seed=3))
    write_moduli_pickles(raw, "bulk", sizes=(12, 4, 4), seed=1)
    write_moduli_pickles(raw, "shear", sizes=(12, 4, 4), seed=2)
    monkeypatch.setenv("FRAMER_DATA_DIR", str(root))
    custom = tmp_path / "custom"
    custom.mkdir()
    from pymatgen.core import Lattice, Structure

    rows = []
    for i in range(12):
        a = 3.5 + 0.1 * i
        s = Structure(Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
        s.to(filename=str(custom / f"x{i}.cif"))
        rows.append(f"x{i}.cif,{a / 2:.4f}")
    (custom / "id_prop.csv").write_text("\n".join(rows) + "\n")
    return {"root": root, "custom": custom}


def dataset_runs() -> list[str]:
    """Every data config; the paper's data sets once per target of the paper's table (``mp/gap``)."""
    targets: dict[str, list[str]] = {}
    for column in yaml.safe_load((CONF / "paper_results.yaml").read_text())["columns"]:
        targets.setdefault(column["dataset"], []).append(f"{column['dataset']}/{column['target']}")
    return [run for p in sorted((CONF / "data").glob("*.yaml")) for run in targets.get(p.stem, [p.stem])]


ALL_ENTRIES = ["--data.init_args.n_train=null", "--data.init_args.n_val=null", "--data.init_args.n_test=null"]
EXTRA = {
    "mp/e_form": ALL_ENTRIES,
    "mp/gap": ALL_ENTRIES,
    "ewald": ["--data.init_args.num_crystals=12", "--data.init_args.build_workers=0"],
}


@pytest.mark.parametrize("run", dataset_runs())
def test_fast_dev_run_on_every_dataset_config(run, raw_data, workdir):
    name, _, target = run.partition("/")
    extra = list(EXTRA.get(run, []))
    if target:
        extra.append(f"--data.init_args.target={target}")
    if name == "custom":
        extra += [f"--data.init_args.root={raw_data['custom']}", "--data.init_args.target=half_a"]
    cli = FramerCLI(args=fit_args("--config", str(CONF / "data" / f"{name}.yaml"), *SMOKE, *extra))
    if target:
        assert cli.datamodule.target == target
    assert cli.trainer.global_step == 1
    assert cli.model.has_swa  # fast_dev_run: 1 epoch, so averaging covers it
    mean, std = cli.datamodule.target_stats()
    assert float(cli.model.target_mean) == pytest.approx(mean) and float(cli.model.target_std) == pytest.approx(std)
    assert torch.isfinite(torch.tensor(cli.final_metrics["test/mae"]))


def read_csv(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_fit_writes_run_files_and_mlflow_and_resumes_in_place(workdir):
    args = fit_args(*STANDINS, "--trainer.max_epochs=3", "--model.init_args.swa_epochs=1", "--tracking.run_name=e2e")
    cli = FramerCLI(args=[*args, "--trainer.accelerator=cpu"])
    run = workdir / "runs" / "e2e" / "version_0"
    for name in ("config.yaml", "run.json", "metrics.csv", "results.json", "predictions.csv", "predictions_best.csv"):
        assert (run / name).is_file(), name
    assert (run / "checkpoints" / "last.ckpt").is_file()
    metrics = json.loads((run / "results.json").read_text())
    assert set(metrics["metrics"]) == {"test/mae", "test_best/mae", "best_val/mae"}
    assert metrics["test_weights"] == "swa" and metrics["swa_steps"] == 3 and metrics["global_step"] == 9
    assert metrics["n_test"] == len(cli.datamodule.splits["test"]) == 8
    rows = read_csv(run / "predictions.csv")
    assert [r["id"] for r in rows] == [r.id for r in cli.datamodule.splits["test"]]
    mae = sum(abs(float(r["prediction"]) - float(r["target"])) for r in rows) / len(rows)
    assert mae == pytest.approx(metrics["metrics"]["test/mae"], rel=1e-5)
    info = json.loads((run / "run.json").read_text())
    assert info["splits"]["test"]["n"] == 8 and info["num_params"] > 0 and "git_commit" in info
    # the resolved config reproduces the run
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["init_args"]["model"]["class_path"] == "training_standins.TinyModel"

    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    mlrun = client.get_run(info["mlflow_run_id"])
    assert mlrun.data.metrics["test/mae"] == pytest.approx(metrics["metrics"]["test/mae"])
    assert "test_best/mae" in mlrun.data.metrics and "val/mae" in mlrun.data.metrics
    assert mlrun.data.metrics["test_best/mae"] == pytest.approx(metrics["metrics"]["test_best/mae"])
    logged = [r for r in read_csv(run / "metrics.csv") if r.get("test_best/mae")]  # logged after its test, too
    assert [float(r["test_best/mae"]) for r in logged] == pytest.approx([metrics["metrics"]["test_best/mae"]])
    assert mlrun.data.params["num_params"] == str(info["num_params"])
    assert mlrun.data.tags["git_commit"] == info["git_commit"]
    assert any(k.startswith("split/") for k in mlrun.data.params)
    artifacts = {a.path for a in client.list_artifacts(mlrun.info.run_id)}
    assert {"config.yaml", "results.json", "predictions.csv", "run.json"} <= artifacts
    assert not (workdir / "mlruns" / "0").exists()  # never the file store

    # resume: same directory, same MLflow run, step count continues
    resumed = FramerCLI(args=[*args, "--trainer.accelerator=cpu", "--trainer.max_epochs=5", "--ckpt_path=last"])
    assert resumed.trainer.global_step == 15
    assert not (workdir / "runs" / "e2e" / "version_1").exists()
    metrics = json.loads((run / "results.json").read_text())
    assert metrics["global_step"] == 15 and metrics["swa_steps"] == 3
    assert json.loads((run / "run.json").read_text())["mlflow_run_id"] == info["mlflow_run_id"]
    assert len(client.search_runs([mlrun.info.experiment_id])) == 1


def test_resume_last_without_a_checkpoint_starts_from_scratch(workdir, capsys):
    args = fit_args(*STANDINS, "--trainer.fast_dev_run=true", "--tracking.run_name=fresh", "--ckpt_path=last")
    cli = FramerCLI(args=args)
    assert cli.trainer.global_step == 1
    assert "training from scratch" in capsys.readouterr().err


def test_test_and_predict_subcommands_from_a_checkpoint(workdir):
    args = fit_args(*STANDINS, "--trainer.max_epochs=2", "--model.init_args.swa_epochs=1", "--tracking.run_name=sub")
    FramerCLI(args=[*args, "--trainer.accelerator=cpu", "--tracking.mlflow=false"])
    ckpt = workdir / "runs" / "sub" / "version_0" / "checkpoints" / "last.ckpt"
    fit_metrics = json.loads((ckpt.parents[1] / "results.json").read_text())["metrics"]
    config = str(ckpt.parents[1] / "config.yaml")
    tester = FramerCLI(args=["test", "--config", config, "--ckpt_path", str(ckpt), "--tracking.mlflow=false"])
    assert float(tester.trainer.callback_metrics["test/mae"]) == pytest.approx(fit_metrics["test/mae"], rel=1e-6)
    tested_dir = workdir / "runs" / "sub" / "version_0" / "test" / "0"  # a new sub-directory of the run
    assert json.loads((tested_dir / "results.json").read_text())["metrics"]["test/mae"] == pytest.approx(
        fit_metrics["test/mae"], rel=1e-6
    )
    assert not (workdir / "runs" / "sub" / "version_1").exists()
    out = workdir / "preds.csv"
    FramerCLI(args=["predict", "--config", config, "--ckpt_path", str(ckpt), f"--predictions_csv={out}"])
    rows = read_csv(out)
    tested = read_csv(ckpt.parents[1] / "predictions.csv")
    assert [r["id"] for r in rows] == [r["id"] for r in tested]
    for a, b in zip(rows, tested):
        assert float(a["prediction"]) == pytest.approx(float(b["prediction"]), rel=1e-6)


def test_print_config_round_trip(workdir, capsys):
    cell = [
        "--config",
        str(CONF / "data" / "jarvis.yaml"),
        "--config",
        str(CONF / "model" / "crystalframer-static.yaml"),
    ]
    base = [*fit_args(*cell, "--data.init_args.target=ehull")]
    with pytest.raises(SystemExit):
        FramerCLI(args=[*base, "--print_config"])
    first = capsys.readouterr().out
    (workdir / "dumped.yaml").write_text(first)
    with pytest.raises(SystemExit):
        FramerCLI(args=["fit", "--config", str(workdir / "dumped.yaml"), "--print_config"])
    second = capsys.readouterr().out
    assert yaml.safe_load(first) == yaml.safe_load(second)
    dumped = yaml.safe_load(first)
    assert dumped["model"]["init_args"]["model"]["init_args"]["frame"] == "static"
    assert dumped["data"]["init_args"]["target"] == "ehull" and dumped["trainer"]["max_epochs"] == 2000


def run_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "framer.cli", *args],
        cwd=tmp_path,
        env=subprocess_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_bad_config_path_is_one_line_from_the_real_entry_point(tmp_path):
    result = run_cli(tmp_path, "fit", "--config", "no/such/config.yaml")
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("framer: error:")]
    assert len(errors) == 1 and "no/such/config.yaml" in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr


def test_user_errors_are_one_line_without_traceback(workdir, capsys):
    empty = workdir / "empty-data"
    empty.mkdir()
    default = ["fit", "--config", str(CONF / "default.yaml")]
    cases = {
        "checkpoint": [*default, "--ckpt_path", "missing.ckpt"],
        "data file": [*default, *SMOKE, f"--data.init_args.data_dir={empty}"],
        "value": [*default, "--config", str(CONF / "data" / "ewald.yaml"), "--data.init_args.target=e_form"],
        "option": [*default, "--trainer.max_epochz=3"],
    }
    for name, args in cases.items():
        with pytest.raises(SystemExit) as exit_info:
            main(args)
        assert exit_info.value.code == 2, name
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("framer: error:")]
        assert len(errors) == 1, (name, err[-2000:])
        assert "Traceback" not in err, (name, err[-2000:])


def test_fit_with_the_paper_network_logs_to_mlflow_and_tests_the_best_checkpoint(workdir, monkeypatch):
    """The default path: CrystalFramer (max frames) built by the CLI, MLflow on, best-val checkpoint reloaded."""
    monkeypatch.setenv("FRAMER_DATA_DIR", str(workdir / "data"))
    data = ["--config", str(CONF / "data" / "ewald.yaml"), "--config", str(CONF / "debug" / "tiny_model.yaml")]
    small = ["--data.init_args.num_crystals=24", "--data.init_args.max_atoms=6", "--data.init_args.build_workers=0"]
    args = fit_args(*data, *small, "--data.init_args.batch_size=4", "--trainer.max_epochs=2")
    cli = FramerCLI(
        args=[*args, "--model.init_args.swa_epochs=1", "--trainer.accelerator=cpu", "--tracking.run_name=net"]
    )
    assert {"test/mae", "test_best/mae", "best_val/mae"} <= set(cli.final_metrics)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("framer").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["model/class_path"] == "framer.models.CrystalFramer"  # as the config spells it
    assert run.data.params["model/init_args/frame"] == "max"
    assert {"test/mae", "test_best/mae"} <= set(run.data.metrics)
