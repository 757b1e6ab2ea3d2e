"""Custom folders of CIF/POSCAR files with id_prop.csv train through the same DataModule API."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from framer.data import CustomDataModule, DataError, InvalidStructureError, record_from_file
from framer.data.ewald import generate_structures
from framer.data.splits import random_split


@pytest.fixture(scope="module")
def structures():
    return generate_structures(12, seed=4)


@pytest.fixture
def folder(tmp_path, structures):
    """12 crystals: even ones as CIF, odd ones as POSCAR; id_prop names with and without extensions."""
    root = tmp_path / "my_crystals"
    root.mkdir()
    rows = []
    for i, s in enumerate(structures):
        plain = Structure(s.lattice, [site.specie.symbol for site in s], s.frac_coords)
        if i % 2 == 0:
            plain.to(filename=str(root / f"c{i}.cif"))
            rows.append(f"c{i}.cif,{s.properties['ewald']}" if i % 4 == 0 else f"c{i},{s.properties['ewald']}")
        else:
            plain.to(filename=str(root / f"c{i}.vasp"), fmt="poscar")
            rows.append(f"c{i},{s.properties['ewald']}")
    (root / "id_prop.csv").write_text("\n".join(rows) + "\n")
    return root


def test_folder_trains_through_the_datamodule_api(folder, structures, data_dir):
    dm = CustomDataModule(root=str(folder), batch_size=4, target_units="eV/atom")
    dm.setup()
    ids = dm.split_ids()
    assert sorted(i for split in ids.values() for i in split) == sorted(f"c{i}" for i in range(12))
    expected = random_split(12, (0.8, 0.1, 0.1), 123)
    assert ids["test"] == [f"c{p}" for p in expected["test"]]
    record = dm.dataset("all")[0]
    k = int(record.id[1:])
    assert record.target == pytest.approx(structures[k].properties["ewald"], rel=1e-12)
    # CIF stores a, b, c and angles (pymatgen re-orients the cell); POSCAR stores the matrix itself.
    np.testing.assert_allclose(Lattice(record.lattice).parameters, structures[k].lattice.parameters, atol=1e-4)
    poscar = dm.dataset("all")[[r.id for r in dm.dataset("all")].index("c1")]
    np.testing.assert_allclose(poscar.lattice, structures[1].lattice.matrix, atol=1e-6)
    assert record.num_atoms == len(structures[k])
    batch = next(iter(dm.train_dataloader()))
    assert len(batch) == 4
    assert dm.cache_path().is_relative_to(data_dir / "processed" / "custom")
    again = CustomDataModule(root=str(folder))
    again.setup()
    assert again.cache_status == "hit" and again.split_fingerprints() == dm.split_fingerprints()


def test_editing_a_structure_file_invalidates_the_cache(folder, data_dir):
    CustomDataModule(root=str(folder)).setup()
    text = (folder / "c1.vasp").read_text()
    (folder / "c1.vasp").write_text(text.replace("1.0\n", "1.01\n", 1))
    dm = CustomDataModule(root=str(folder))
    dm.setup()
    assert dm.cache_status == "stale"


def test_split_file_and_bad_files_are_handled(folder, data_dir):
    (folder / "c3.vasp").write_text("this is not a POSCAR\n")
    (folder / "c5.vasp").unlink()
    split = {"train": [f"c{i}" for i in range(8)], "val": ["c8.cif", "c9"], "test": ["c10", "c11"]}
    (folder / "split.json").write_text(json.dumps(split))
    dm = CustomDataModule(root=str(folder), split_file=str(folder / "split.json"))
    dm.setup()
    ids = dm.split_ids()
    assert ids["train"] == ["c0", "c1", "c2", "c4", "c6", "c7"]  # the unreadable and the missing file skipped
    assert ids["val"] == ["c8", "c9"] and ids["test"] == ["c10", "c11"]
    report = json.loads(dm.report_path.read_text())
    assert report["skipped"]["counts"] == {"unreadable_file": 1, "file_not_found": 1}


def test_split_file_with_unknown_ids_is_an_error(folder, data_dir):
    (folder / "split.json").write_text(json.dumps({"train": ["c0", "nope"], "val": [], "test": []}))
    with pytest.raises(DataError, match=r"not in id_prop\.csv.*nope"):
        CustomDataModule(root=str(folder), split_file=str(folder / "split.json")).setup()


def test_id_prop_problems_are_reported_with_line_numbers(folder, data_dir):
    (folder / "id_prop.csv").write_text("c0,1.0\nc1,abc\n")
    with pytest.raises(DataError, match=r"id_prop\.csv:2: target 'abc' is not a number"):
        CustomDataModule(root=str(folder)).setup()
    (folder / "id_prop.csv").write_text("c0,1.0\nc0.cif,2.0\n")
    with pytest.raises(DataError, match="already appears on line 1"):
        CustomDataModule(root=str(folder)).setup()
    with pytest.raises(DataError, match="not found"):
        CustomDataModule(root=str(folder / "missing"))


def test_header_row_and_missing_targets(folder, data_dir):
    rows = (folder / "id_prop.csv").read_text().splitlines()
    rows[2] = rows[2].split(",")[0] + ",na"
    (folder / "id_prop.csv").write_text("file,energy\n" + "\n".join(rows) + "\n")
    dm = CustomDataModule(root=str(folder))
    assert sum(dm.split_sizes().values()) == 11
    assert json.loads(dm.report_path.read_text())["missing_target"]["counts"] == {"missing_target": 1}


def test_a_single_bad_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "broken.cif"
    bad.write_text("data_x\n_cell_length_a 3\n")
    with pytest.raises(InvalidStructureError, match=r"broken\.cif"):
        record_from_file(bad)
    with pytest.raises(InvalidStructureError, match="file not found"):
        record_from_file(tmp_path / "absent.cif")


def test_cache_survives_removal_of_the_raw_folder_contents(folder, data_dir):
    first = CustomDataModule(root=str(folder), train_fraction=0.5, val_fraction=0.25, test_fraction=0.25)
    first.setup()
    (folder / "id_prop.csv").unlink()
    again = CustomDataModule(root=str(folder), train_fraction=0.5, val_fraction=0.25, test_fraction=0.25)
    again.setup()
    assert again.cache_status == "hit-without-raw" and again.split_ids() == first.split_ids()
    with pytest.raises(DataError, match="other settings"):
        CustomDataModule(root=str(folder), split_seed=1).setup()


# ------------------------------------------------------------------------------------------ names outside the folder


@pytest.fixture
def outside(tmp_path, folder):
    """A valid structure file next to (not inside) the data folder."""
    path = tmp_path / "secret.vasp"
    (folder / "c1.vasp").rename(path)
    return path


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink", "symlinked-dir"])
def test_names_outside_the_data_folder_are_an_error_naming_the_row(folder, outside, data_dir, how):
    rows = (folder / "id_prop.csv").read_text().splitlines()
    target = rows[1].split(",")[1]
    name = {"dotdot": "../secret.vasp", "absolute": str(outside), "symlink": "c1.vasp", "symlinked-dir": "up/secret"}
    if how == "symlink":
        (folder / "c1.vasp").symlink_to(outside)
    elif how == "symlinked-dir":
        (folder / "up").symlink_to(outside.parent, target_is_directory=True)
    rows[1] = f"{name[how]},{target}"
    (folder / "id_prop.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"id_prop\.csv:2: .* is outside the data folder .*allow_outside_root") as err:
        CustomDataModule(root=str(folder)).setup()
    assert len(str(err.value).splitlines()) == 1 and repr(name[how]) in str(err.value)
    dm = CustomDataModule(root=str(folder), allow_outside_root=True)  # the explicit, documented way to read it
    dm.setup()
    assert len(dm.dataset("all")) == 12


def test_a_symbolic_link_inside_the_folder_is_fine(folder, data_dir):
    (folder / "sub").mkdir()
    (folder / "c1.vasp").rename(folder / "sub" / "c1.vasp")
    (folder / "c1.vasp").symlink_to(folder / "sub" / "c1.vasp")
    dm = CustomDataModule(root=str(folder))
    dm.setup()
    assert "c1" in dm.dataset("all").ids


# ------------------------------------------------------------------------------------------ target values


@pytest.mark.parametrize("value", ["1_000", "1_0.5", "１２", "٣"])
@pytest.mark.parametrize("line", [1, 2])
def test_targets_must_be_plain_decimal_numbers(folder, data_dir, value, line):
    rows = (folder / "id_prop.csv").read_text().splitlines()
    rows[line - 1] = rows[line - 1].split(",")[0] + "," + value
    (folder / "id_prop.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match=rf"id_prop\.csv:{line}: target '{value}' is not a number") as err:
        CustomDataModule(root=str(folder)).setup()
    assert len(str(err.value).splitlines()) == 1


def test_targets_whose_statistics_would_overflow_are_skipped_and_counted(folder, data_dir, caplog):
    rows = (folder / "id_prop.csv").read_text().splitlines()
    for i, value in ((0, "1e308"), (5, "-1.7e308"), (7, "1e31")):
        rows[i] = rows[i].split(",")[0] + "," + value
    (folder / "id_prop.csv").write_text("\n".join(rows) + "\n")
    dm = CustomDataModule(root=str(folder), batch_size=2)
    dm.setup()
    assert json.loads(dm.report_path.read_text())["skipped"]["counts"] == {"target_out_of_range": 3}
    assert "target_out_of_range" in caplog.text  # the build warns
    mean, std = dm.target_stats()
    assert np.isfinite(mean) and np.isfinite(std) and std > 0
    assert max(abs(t) for t in dm.dataset("all").targets) < 1e3


def test_a_folder_of_huge_targets_is_one_error_line_from_the_command_line(
    folder, data_dir, tmp_path, monkeypatch, capsys
):
    from framer.cli import main

    rows = (folder / "id_prop.csv").read_text().splitlines()
    (folder / "id_prop.csv").write_text("\n".join(row.split(",")[0] + ",1e308" for row in rows) + "\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["framer"])
    conf = Path(__file__).resolve().parents[2] / "conf"
    args = ["fit", "--config", str(conf / "default.yaml"), "--config", str(conf / "data" / "custom.yaml")]
    args += ["--config", str(conf / "debug" / "smoke.yaml"), f"--data.init_args.root={folder}"]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("framer: error:")]
    assert len(errors) == 1 and "target_out_of_range" in errors[0], err[-2000:]
    assert "Traceback" not in err
