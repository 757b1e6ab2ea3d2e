"""Model folders (``python -m framer.export``), loading them, ensembles and their uncertainty (issue 18).

Two tiny CrystalFramer networks are trained once on the embedded Ewald data by the CLI; every test exports,
loads and predicts with them.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import framer
from framer import ensemble as ensemble_cli
from framer.cli import FramerCLI
from framer.export import ExportError, export, write_folder
from framer.export import main as export_main
from framer.predict import main as predict_main
from framer.predictor import ModelFolderError
from framer.rundir import RunRoot

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "conf"
FOLDER_FILES = {"model.json", "weights.safetensors", "README.md"}


def train(runs: Path, seed: int) -> Path:
    """A 2-epoch tiny CrystalFramer (SWA over the last epoch) on 24 Ewald crystals; its run root, as reproduce
    names and marks it."""
    name = f"mp_e_form__crystalframer__seed{seed}"
    configs = ["default.yaml", "data/ewald.yaml", "trainer/cpu.yaml", "debug/tiny_model.yaml"]
    args = ["fit", *(a for c in configs for a in ("--config", str(CONF / c)))]
    args += ["--data.init_args.num_crystals=24", "--data.init_args.max_atoms=6", "--data.init_args.build_workers=0"]
    args += ["--data.init_args.batch_size=8", "--trainer.max_epochs=2", "--model.init_args.swa_epochs=1"]
    args += [f"--seed_everything={seed}", f"--tracking.save_dir={runs}", f"--tracking.run_name={name}"]
    FramerCLI(args=[*args, "--tracking.mlflow=false", "--trainer.enable_progress_bar=false"])
    root = RunRoot(runs / name)
    root.write_cell({"model": "crystalframer", "column": "mp/e_form", "seed": seed})
    return root.path


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> list[Path]:
    tmp = tmp_path_factory.mktemp("export-runs")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FRAMER_DATA_DIR", str(tmp / "data"))
        patch.chdir(tmp)
        return [train(tmp / "runs", seed) for seed in (0, 1)]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    """The same three crystals as a CIF file, a POSCAR file, pymatgen Structures and ASE Atoms."""
    from pymatgen.core import Lattice, Structure

    folder = tmp_path_factory.mktemp("inputs")
    crystals = [
        Structure(Lattice.cubic(4.2), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
        Structure(Lattice.cubic(3.9), ["K", "F"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
        Structure(Lattice.tetragonal(3.8, 5.1), ["Mg", "O", "O"], [[0, 0, 0], [0.5, 0.5, 0.3], [0.5, 0.5, 0.7]]),
    ]
    crystals[0].to(filename=str(folder / "NaCl.cif"))
    crystals[1].to(filename=str(folder / "POSCAR"), fmt="poscar")
    crystals[2].to(filename=str(folder / "MgO2.cif"))
    return {"folder": folder, "cif": folder / "NaCl.cif", "poscar": folder / "POSCAR", "structures": crystals}


# what a fresh process predicts: CIF path, POSCAR path, a Structure and ASE Atoms read from them (one thread)
PREDICT = """
import json, sys, torch
torch.set_num_threads(1)
import ase.io, framer
from pymatgen.core import Structure
model, cif, poscar = sys.argv[1:4]
inputs = [cif, poscar, Structure.from_file(cif), ase.io.read(poscar, format="vasp")]
print(json.dumps([float(v).hex() for v in framer.load(model).predict(inputs)]))
"""


def test_an_exported_model_predicts_exactly_what_its_checkpoint_does_in_a_fresh_process(runs, inputs, tmp_path):
    import ase.io
    from pymatgen.core import Structure

    run = RunRoot(runs[0]).latest_finished()
    out = tmp_path / "model"
    assert export_main([str(runs[0]), str(out)]) == 0
    assert {p.name for p in out.iterdir()} == FOLDER_FILES  # nothing else, no pickle
    assert not any(p.read_bytes().startswith(b"\x80") for p in out.iterdir())  # no pickle protocol header
    meta = json.loads((out / "model.json").read_text())
    module = framer.CrystalRegressor.load_from_checkpoint(run.last_checkpoint)
    results, info = run.read_results(), run.read_info()
    assert meta["format_version"] == 1 and meta["model"]["class_path"].endswith(".CrystalFramer")
    assert meta["target"] == {
        "dataset": "ewald",
        "name": "ewald_energy",
        "units": "eV/atom",
        "mean": float(module.target_mean),
        "std": float(module.target_std),
    }
    assert meta["weights"] == "swa" and meta["test_mae"] == results["metrics"]["test/mae"]
    assert meta["data"]["splits"] == info["splits"] and meta["git_commit"] == info["git_commit"]
    assert meta["torch_version"] == torch.__version__ and meta["data"]["max_test_atoms"] <= 6
    card = (out / "README.md").read_text()
    assert "ewald_energy" in card and f"{meta['test_mae']:.4g} eV/atom" in card and "largest test cell" in card

    cif, poscar = str(inputs["cif"]), str(inputs["poscar"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        from_checkpoint = framer.load(runs[0]).predict(
            [cif, poscar, Structure.from_file(cif), ase.io.read(poscar, format="vasp")]
        )
    finally:
        torch.set_num_threads(threads)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", PREDICT, str(out), cif, poscar], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    from_folder = [float.fromhex(v) for v in json.loads(done.stdout.strip().splitlines()[-1])]
    assert from_folder == [float(v) for v in from_checkpoint]  # identical floats, not merely close
    assert from_folder[0] == from_folder[2]  # a CIF file and the Structure read from it


def test_the_best_val_weights_export_with_their_own_test_mae(runs, tmp_path):
    out = export(runs[0], tmp_path / "best", best=True)
    meta = json.loads((out / "model.json").read_text())
    results = RunRoot(runs[0]).latest_finished().read_results()
    assert meta["weights"] == "best-val" and meta["test_mae"] == results["metrics"]["test_best/mae"]


def tamper(folder: Path, change) -> Path:
    meta = json.loads((folder / "model.json").read_text())
    change(meta)
    (folder / "model.json").write_text(json.dumps(meta))
    return folder


def test_a_tampered_model_folder_is_one_clear_error_and_runs_nothing(runs, inputs, tmp_path, capsys, monkeypatch):
    good = export(runs[0], tmp_path / "good")
    marker = tmp_path / "imported"
    (tmp_path / "evil_model.py").write_text(f"open({str(marker)!r}, 'w').close()\nclass Net: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    def case(name, change=None, weights=None) -> Path:
        folder = tmp_path / name
        write_folder(folder, {p.name: p.read_bytes() for p in good.iterdir()})
        if change is not None:
            tamper(folder, change)
        if weights is not None:
            (folder / "weights.safetensors").write_bytes(weights)
        return folder

    def set_path(path):
        return lambda m: m["model"].update(class_path=path)

    cases = {
        "unknown class": (case("unknown", set_path("evil_model.Net")), "model.json", "refused and not imported"),
        "torch class": (case("torch", set_path("torch.nn.Linear")), "model.json", "not a framer network"),
        "missing class": (case("missing", set_path("framer.models.Nope")), "model.json", "cannot be imported"),
        "wrong shapes": (
            case("shapes", lambda m: m["model"]["init_args"].update(model_dim=32)),
            "weights.safetensors",
            "does not fit",
        ),
        "missing key": (case("key", lambda m: m.pop("target")), "model.json", "missing or malformed"),
        "format version": (case("version", lambda m: m.update(format_version=99)), "model.json", "version 99"),
        "not safetensors": (case("weights", weights=b"\x80\x04junk"), "weights.safetensors", "safetensors"),
    }
    for name, (folder, file, message) in cases.items():
        with pytest.raises(SystemExit) as info:
            predict_main(["--model", str(folder), "--inputs", str(inputs["cif"]), "--out", str(tmp_path / "p.csv")])
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith("framer: error:")]
        assert info.value.code == 2 and len(lines) == 1 and "Traceback" not in err, (name, err[-2000:])
        assert str(folder / file) in lines[0] and message in lines[0], (name, lines[0])
    assert not marker.exists() and "evil_model" not in sys.modules
    assert not (tmp_path / "p.csv").exists()
    with pytest.raises(ModelFolderError, match="not a framer-model file"):
        framer.load(case("format", lambda m: m.update(format="other")))


def test_export_refuses_a_non_empty_folder_and_leaves_nothing_half_written(runs, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit) as info:
        export_main([str(runs[0]), str(out)])
    assert info.value.code == 2 and "not empty" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    with pytest.raises(TypeError):  # a write failing half-way: the old folder stays, no temporary folder remains
        write_folder(out, {"model.json": b"{}", "weights.safetensors": None}, force=True)
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and [p.name for p in tmp_path.iterdir()] == ["out"]
    assert export_main([str(runs[0]), str(out), "--force"]) == 0
    assert {p.name for p in out.iterdir()} == FOLDER_FILES and [p.name for p in tmp_path.iterdir()] == ["out"]
    with pytest.raises(ExportError, match="not empty"):
        export(runs[0], out)


def test_ensembles_predict_the_members_mean_and_spread(runs, inputs, tmp_path):
    members = [export(run, tmp_path / f"m{i}") for i, run in enumerate(runs)]
    structures = inputs["structures"]
    single = np.stack([framer.load(m).predict(structures) for m in members])
    assert not np.array_equal(single[0], single[1])
    mean, std = framer.load(members).predict(structures, return_std=True)
    np.testing.assert_array_equal(mean, single.mean(0))
    np.testing.assert_array_equal(std, single.std(0))
    assert (std > 0).all()

    folder = export(runs, tmp_path / "ensemble")  # several sources: an ensemble folder
    assert json.loads((folder / "ensemble.json").read_text())["members"] == ["member_0", "member_1"]
    mean_folder, std_folder = framer.load(folder).predict(structures, return_std=True)
    np.testing.assert_array_equal(mean_folder, mean)
    np.testing.assert_array_equal(std_folder, std)

    out = tmp_path / "preds.csv"
    args = ["--inputs", str(inputs["folder"]), "--out", str(out), "--device", "cpu"]
    assert predict_main(["--model", *map(str, members), *args]) == 0
    with out.open() as handle:
        rows = {row["id"]: row for row in csv.DictReader(handle)}
    assert list(next(iter(rows.values()))) == ["id", "prediction", "std"]
    assert float(rows["NaCl"]["prediction"]) == mean[0] and float(rows["NaCl"]["std"]) == std[0]
    assert predict_main(["--model", str(members[0]), *args]) == 0
    with out.open() as handle:
        assert next(csv.reader(handle)) == ["id", "prediction"]

    for escape in ("../m0", str(members[0])):  # members must lie inside the ensemble folder
        (folder / "ensemble.json").write_text(
            json.dumps({"format": "framer-ensemble", "format_version": 1, "members": ["member_0", escape]})
        )
        with pytest.raises(ModelFolderError, match="outside the ensemble folder"):
            framer.load(folder)


def test_reproduced_cells_become_ensembles_with_a_report(runs, tmp_path):
    runs_dir = runs[0].parent
    out = tmp_path / "results"
    assert ensemble_cli.main(["--runs", str(runs_dir), "--out", str(out)]) == 0
    with (out / "ensembles.csv").open() as handle:
        (row,) = list(csv.DictReader(handle))
    tables = []
    for run in runs:
        with RunRoot(run).latest_finished().predictions().open() as handle:
            tables.append({r["id"]: (float(r["target"]), float(r["prediction"])) for r in csv.DictReader(handle)})
    ids = sorted(tables[0])
    target = np.array([tables[0][i][0] for i in ids])
    preds = np.array([[t[i][1] for i in ids] for t in tables])
    assert row["members"] == "2" and int(row["n_test"]) == len(ids)
    assert float(row["ensemble_mae"]) == pytest.approx(np.abs(preds.mean(0) - target).mean(), rel=1e-12)
    assert float(row["single_mae_mean"]) == pytest.approx(np.abs(preds - target).mean(), rel=1e-12)
    md = (out / "ensembles.md").read_text()
    assert "mp/e_form | crystalframer | 2" in md and (out / "figures" / "calibration.png").stat().st_size > 0
    ensemble = framer.load(runs_dir / "ensembles" / "mp_e_form__crystalframer")
    assert len(ensemble.members) == 2
    x = np.array([1.0, 2.0, 3.0, 4.0])
    assert ensemble_cli.spearman(x, x**3) == 1.0 and np.isnan(ensemble_cli.spearman(x[:2], x[:2]))
