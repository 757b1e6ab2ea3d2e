"""``make demo`` is ordinary CLI runs (run directory, run.json, config.yaml, MLflow); the README quotes its table."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from framer import demo

REPO = Path(__file__).resolve().parents[2]
TINY = [
    "trainer.max_epochs=2",
    "model.init_args.swa_epochs=1",
    "data.init_args.num_crystals=16",
    "data.init_args.max_atoms=4",
    "data.init_args.batch_size=4",
    "data.init_args.build_workers=0",
]


def test_demo_runs_through_the_cli_with_run_files_and_mlflow(workdir, monkeypatch, capsys):
    monkeypatch.setenv("FRAMER_DATA_DIR", str(workdir / "data"))
    sets = [arg for item in TINY for arg in ("--set", item)]
    assert demo.main(["--models", "crystalformer", "--threads", "1", *sets]) == 0
    run = workdir / "runs" / "demo" / "crystalformer" / "version_0"
    for name in ("config.yaml", "run.json", "metrics.csv", "results.json", "predictions.csv", "checkpoints/last.ckpt"):
        assert (run / name).is_file(), name
    info = json.loads((run / "run.json").read_text())
    assert info["threads"] == 1 and info["dataset_name"] == "ewald" and info["num_params"] == 31_495
    summary = json.loads((workdir / "runs" / "demo" / "summary.json").read_text())
    (row,) = summary["models"]
    results = json.loads((run / "results.json").read_text())
    assert row["test_mae"] == results["metrics"]["test/mae"] and row["run_dir"] == str(
        Path("runs/demo/crystalformer/version_0")
    )
    targets = [float(line.split(",")[1]) for line in (run / "predictions.csv").read_text().splitlines()[1:]]
    assert summary["baseline_test_mae"] == pytest.approx(
        sum(abs(t - info["target_mean"]) for t in targets) / len(targets)
    )
    out = capsys.readouterr().out
    assert demo.table(summary) in out

    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    (mlrun,) = client.search_runs([client.get_experiment_by_name("demo").experiment_id])
    assert mlrun.info.run_id == info["mlflow_run_id"] and mlrun.info.status == "FINISHED"
    assert mlrun.info.run_name == "crystalformer" and "test/mae" in mlrun.data.metrics


def test_write_folder_makes_a_custom_data_set(tmp_path):
    from framer.data import CustomDataModule

    assert demo.main(["--write-folder", str(tmp_path / "f"), "--num-crystals", "6"]) == 0
    rows = (tmp_path / "f" / "id_prop.csv").read_text().splitlines()
    assert len(rows) == 6 and all((tmp_path / "f" / row.split(",")[0]).is_file() for row in rows)
    data = CustomDataModule(root=str(tmp_path / "f"), data_dir=str(tmp_path / "data"), build_workers=0)
    data.prepare_data()
    data.setup("fit")
    assert sum(data.split_sizes().values()) == 6


def readme_table() -> str:
    text = (REPO / "README.md").read_text()
    start = text.index("| model | test MAE (eV/atom)")
    return text[start : text.index("\n\n", start)]


def _without_times(table: str) -> list[str]:
    return [re.sub(r"\| [^|]* \|$", "|", line) for line in table.splitlines()]


@pytest.mark.slow
def test_make_demo_prints_the_readmes_table(workdir, monkeypatch, capsys):
    """The README's quick-start table is what ``make demo`` prints (times aside: they depend on the machine)."""
    monkeypatch.setenv("FRAMER_DATA_DIR", str(workdir / "data"))
    assert demo.main([]) == 0
    printed = demo.table(json.loads((workdir / "runs" / "demo" / "summary.json").read_text()))
    assert _without_times(printed) == _without_times(readme_table())
