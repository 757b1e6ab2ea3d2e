"""``framer.load(path).predict(structures)``: a trained run (or checkpoint) in Python, and ``python -m framer.predict``
on a run directory."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from test_cli import STANDINS, fit_args

import framer
from framer.checkpoints import CheckpointError
from framer.cli import FramerCLI
from framer.predict import main as predict_main


@pytest.fixture
def trained(workdir):
    """A small run made by the CLI (MLflow off): its CLI object and version directory."""
    args = fit_args(*STANDINS, "--trainer.max_epochs=2", "--model.init_args.swa_epochs=1", "--tracking.run_name=p")
    cli = FramerCLI(args=[*args, "--trainer.accelerator=cpu", "--tracking.mlflow=false"])
    return cli, workdir / "runs" / "p" / "version_0"


def read_rows(path: Path) -> list[dict]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_load_a_run_and_predict_what_its_test_predicted(trained):
    cli, run = trained
    tested = read_rows(run / "predictions.csv")
    records = cli.datamodule.splits["test"]
    assert [r.id for r in records] == [row["id"] for row in tested]
    expected = np.array([float(row["prediction"]) for row in tested])
    for path in (run, run.parent, run / "checkpoints" / "last.ckpt"):  # version, run name, checkpoint
        predictor = framer.load(path)
        assert isinstance(predictor, framer.Predictor) and predictor.weights == "swa"
        np.testing.assert_allclose(predictor.predict(records), expected, rtol=1e-6)
    assert predictor.target == {"dataset_name": "tiny", "target": "toy", "target_units": "eV"}
    raw = framer.load(run, weights="raw").predict(records)
    assert not np.allclose(raw, expected)  # the SWA average is not the last weights


def test_load_refuses_what_is_no_checkpoint(tmp_path):
    (tmp_path / "empty-run" / "version_0").mkdir(parents=True)
    (tmp_path / "empty-run" / "version_0" / "config.yaml").write_text("{}\n")
    with pytest.raises(CheckpointError, match=r"has no last\.ckpt"):
        framer.load(tmp_path / "empty-run")
    with pytest.raises(CheckpointError, match="neither a checkpoint, a run directory nor a model folder"):
        framer.load(tmp_path / "nothing-here")


def test_framer_predict_takes_a_run_directory(trained, tmp_path):
    from pymatgen.core import Lattice, Structure

    _, run = trained
    cif = tmp_path / "NaCl.cif"
    Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]).to(filename=str(cif))
    out = tmp_path / "p.csv"
    assert predict_main(["--ckpt", str(run), "--inputs", str(cif), "--out", str(out), "--device", "cpu"]) == 0
    (row,) = read_rows(out)
    assert row["id"] == "NaCl"
    assert float(row["prediction"]) == pytest.approx(float(framer.load(run).predict([cif])[0]), rel=1e-6)
