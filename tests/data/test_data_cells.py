"""Cells and sizes: exact short distances in O(N) memory, reduced bases, unphysical cells, atom and file-size limits."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

from framer.data import CustomDataModule, InvalidStructureError, MPDataModule, record_from_file, record_from_structure
from framer.data.cells import closest_pair_distance, shortest_lattice_vector
from framer.data.ewald import generate_structures
from framer.data.structures import DEFAULT_MAX_ATOMS, DEFAULT_MAX_FILE_MB, make_record
from framer.geometry import interplanar_spacings
from framer.models import CrystalFramer
from framer.testing import predict
from tests.data.fakes import fake_megnet_entries, jarvis_atoms_dict, write_jarvis_zip

# ---------------------------------------------------------------------------------------------- exact distances


def brute_force_closest(lattice: np.ndarray, frac: np.ndarray, cutoff: float) -> float:
    """Every (i, j, n) with |n_m| large enough to reach ``cutoff``, except an atom and itself (n = 0)."""
    diff = frac[None, :, :] - frac[:, None, :]
    diff -= np.round(diff)
    reach = np.ceil(0.5 + cutoff / interplanar_spacings(lattice)).astype(int)
    shifts = np.stack(np.meshgrid(*[np.arange(-r, r + 1) for r in reach], indexing="ij"), -1).reshape(-1, 3)
    d = np.linalg.norm((diff[:, :, None, :] + shifts) @ lattice, axis=-1)
    same = np.eye(len(frac), dtype=bool)[:, :, None] & (shifts == 0).all(axis=1)[None, None, :]
    d[same] = np.inf
    best = d.min()
    return best if best < cutoff else np.inf


def test_closest_pair_distance_is_exact_below_the_cutoff_with_periodic_and_self_images():
    rng = np.random.default_rng(0)
    checked = found = 0
    while checked < 300:
        lattice = rng.normal(size=(3, 3)) * rng.uniform(0.3, 3.0)
        if abs(np.linalg.det(lattice)) < 1e-2:
            continue
        n = int(rng.integers(1, 6))
        frac = rng.uniform(-2, 3, size=(n, 3))  # unwrapped coordinates
        if n > 1 and rng.random() < 0.5:
            frac[1] = frac[0] + rng.integers(-2, 3, size=3) + rng.normal(size=3) * 0.02  # across a cell face
        cutoff = float(rng.uniform(0.1, 2.5) * interplanar_spacings(lattice).min())  # also beyond the spacing
        expected = brute_force_closest(lattice, frac, cutoff)
        assert closest_pair_distance(lattice, frac, cutoff) == pytest.approx(expected, rel=1e-9, abs=1e-12)
        checked += 1
        found += np.isfinite(expected)
    assert 50 < found < 280  # both outcomes were exercised
    thin = np.diag([0.3, 4.0, 4.0])  # one atom 0.3 Å from its own image
    assert closest_pair_distance(thin, np.zeros((1, 3)), 0.5) == pytest.approx(0.3)
    assert shortest_lattice_vector(thin, 0.5) == pytest.approx(0.3)
    assert shortest_lattice_vector(thin, 0.2) == np.inf
    skewed = np.array([[3.0, 0, 0], [0, 3.0, 0], [0.2 + 3.0 * 7, 3.0 * 5, 0.25]])  # shortest: (0.2, 0, 0.25)
    assert shortest_lattice_vector(skewed, 1.0) == pytest.approx(np.hypot(0.2, 0.25))


MEMORY_PROBE = textwrap.dedent(
    """
    import json, resource, sys
    import numpy as np
    from framer.data.structures import InvalidStructureError, make_record

    def grid(n):  # n atoms on a jittered simple cubic grid, 2.2 Å apart
        k = int(np.ceil(n ** (1 / 3)))
        g = np.stack(np.meshgrid(*[np.arange(k)] * 3, indexing="ij"), -1).reshape(-1, 3)[:n]
        frac = (g + 0.5 + np.random.default_rng(0).uniform(-0.2, 0.2, g.shape)) / k
        return np.eye(3) * 2.2 * k, frac, np.where(np.arange(n) % 2, 11, 17)

    n = int(sys.argv[1])
    make_record("warm-up", *grid(8))  # imports scipy and pymatgen before the measurement
    lattice, frac, numbers = grid(n)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    record = make_record("big", lattice, frac, numbers, max_atoms=n)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    frac[1] = frac[0] + [0.03 / lattice[0, 0], 0, 0]  # two atoms 0.03 Å apart
    try:
        make_record("overlap", lattice, frac, numbers, max_atoms=n)
        message = None
    except InvalidStructureError as err:
        message = f"{err.reason}: {err}"
    print(json.dumps({"peak_kb": peak_kb, "atoms": record.num_atoms, "overlap": message}))
    """
)


def test_overlap_check_of_a_large_cell_needs_memory_linear_in_the_atoms():
    """4,000 atoms: one N x N float64 matrix is 128 MB (the pairwise check took 610 MB); the k-d tree a few MB."""
    n = 4000
    result = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, str(n)], capture_output=True, text=True, timeout=300, check=True
    )
    probe = json.loads(result.stdout.strip().splitlines()[-1])
    assert probe["atoms"] == n
    assert probe["peak_kb"] * 1024 < 8 * n**2 / 8, probe  # far below the size of one N x N matrix
    assert probe["overlap"].startswith("overlapping_atoms") and "(0.03 Å)" in probe["overlap"]


# ---------------------------------------------------------------------------------------------- reduced cells

NACL_FRAC = [[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0], [0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5]]
NACL_FRAC += [[0.5, 0.5, 0.5]]
NACL_SPECIES = ["Na"] * 4 + ["Cl"] * 4


def nacl(skew: int = 0) -> Structure:
    """Rock salt (conventional cell, a = 5.64 Å), written with c' = c + skew a + skew b; atoms at the same places."""
    cubic = Lattice.cubic(5.64).matrix
    cell = cubic.copy()
    cell[2] += skew * (cubic[0] + cubic[1])
    cart = np.array(NACL_FRAC) @ cubic
    return Structure(cell, NACL_SPECIES, cart, coords_are_cartesian=True)


def test_a_skewed_cell_is_reduced_before_its_image_box_is_chosen(tmp_path):
    reduced, skewed = record_from_structure(nacl(0), "nacl"), record_from_structure(nacl(45), "skewed")
    np.testing.assert_array_equal(reduced.image_box, [2, 2, 2])
    np.testing.assert_array_equal(skewed.image_box, [2, 2, 2])  # 56, 56, 2 (113 x 113 x 5 images) as written
    np.testing.assert_allclose(skewed.lattice, reduced.lattice, atol=1e-10)
    np.testing.assert_allclose(skewed.cart_coords, reduced.cart_coords, atol=1e-10)  # the atoms did not move
    nacl(45).to(filename=str(tmp_path / "POSCAR"), fmt="poscar")  # a file keeps the skewed matrix as written
    np.testing.assert_array_equal(record_from_file(tmp_path / "POSCAR").image_box, [2, 2, 2])

    torch.manual_seed(0)
    small = dict(num_layers=1, model_dim=16, num_heads=2, ff_dim=32, head_dim=16, dist_basis=8, angle_basis=4)
    for frame in ("max", "none"):
        model = CrystalFramer(frame=frame, **small).double().eval()
        out = predict(model, [reduced, skewed])
        assert torch.isfinite(out).all()
        assert abs(float(out[0] - out[1])) <= 1e-6 * max(1.0, abs(float(out[0]))), (frame, out)


def real_structures() -> dict[str, Structure]:
    """Real crystals shipped with ase and pymatgen (no download): DCDFT elements, test and AFLOW prototype cells."""
    import gzip
    import importlib.util

    import ase.collections
    from pymatgen.io.ase import AseAtomsAdaptor
    from pymatgen.util.testing import STRUCTURES_DIR

    out = {f"dcdft:{n}": AseAtomsAdaptor.get_structure(ase.collections.dcdft[n]) for n in ase.collections.dcdft.names}
    for path in sorted(Path(STRUCTURES_DIR).glob("*.json")):
        content = json.loads(path.read_text())
        if content.get("@class") == "Structure":
            out[f"pymatgen:{path.stem}"] = Structure.from_dict(content)
    prototypes = importlib.util.find_spec("pymatgen.analysis.prototypes")  # not imported: it parses its BibTeX
    with gzip.open(Path(prototypes.submodule_search_locations[0]) / "aflow_prototypes.json.gz", "rt") as fh:
        for i, entry in enumerate(json.load(fh)):
            snl = entry["snl"]
            out[f"aflow:{i}"] = Structure.from_dict({"lattice": snl["lattice"], "sites": snl["sites"]})
    return {k: s for k, s in out.items() if s.is_ordered}


def test_real_crystals_all_load_and_keep_their_cell_unless_a_reduced_one_is_cheaper():
    from framer.data.cells import image_count

    structures = real_structures()
    assert len(structures) > 370
    changed = []
    for name, structure in structures.items():
        record = record_from_structure(structure, name, target=1.25)  # every real crystal loads
        assert record.target == 1.25 and record.num_atoms == len(structure)
        if np.array_equal(record.lattice, structure.lattice.matrix):
            np.testing.assert_array_equal(record.frac_coords, structure.frac_coords)  # bit for bit as given
        else:
            changed.append(name)
            assert image_count(record.lattice) < image_count(structure.lattice.matrix)
            np.testing.assert_allclose(record.cart_coords, structure.cart_coords, atol=1e-9)
    assert len(changed) <= 5, changed  # (1 of 376 today: the DCDFT cell of arsenic)


@pytest.mark.parametrize(
    ("lattice", "frac", "message"),
    [
        (np.eye(3) * 0.1, [[0, 0, 0]], "0.001 Å^3 per atom"),  # 2.8 M images as written
        (np.diag([0.3, 4.0, 4.0]), [[0, 0, 0]], "0.3 Å from its own periodic image"),
        (np.diag([4.0, 4.0, 0.3]), [[0, 0, 0], [0.5, 0.5, 0.5]], "0.3 Å from its own periodic image"),
        (np.eye(3) * 1.2, [[0, 0, 0], [0.5, 0.5, 0.5]], "0.864 Å^3 per atom"),
    ],
)
def test_unphysical_cells_are_refused_with_a_reason(lattice, frac, message):
    with pytest.raises(InvalidStructureError, match="unphysical cell") as err:
        make_record("x", lattice, frac, [1] * len(frac))
    assert err.value.reason == "unphysical_cell" and message in str(err.value)


def test_unphysical_cells_and_large_crystals_are_skipped_and_counted_by_the_paper_loaders(data_dir):
    entries = fake_megnet_entries(24, seed=5)
    entries[2]["atoms"] = jarvis_atoms_dict(np.eye(3) * 0.1, [[0, 0, 0]], ["H"])
    entries[7]["atoms"] = jarvis_atoms_dict(np.diag([0.3, 4.0, 4.0]), [[0, 0, 0]], ["Li"])
    grid = np.stack(np.meshgrid(*[np.arange(3)] * 3, indexing="ij"), -1).reshape(-1, 3) / 3
    entries[11]["atoms"] = jarvis_atoms_dict(np.eye(3) * 7.5, grid, ["Na"] * 27)  # 27 atoms
    write_jarvis_zip(data_dir / "raw", "megnet", entries)
    kwargs = dict(target="e_form", n_train=None, n_val=None, n_test=None, batch_size=2)
    dm = MPDataModule(**kwargs, max_atoms=20)
    dm.setup()
    report = json.loads(dm.report_path.read_text())
    assert report["skipped"]["counts"] == {"unphysical_cell": 2, "too_many_atoms": 1}
    assert "27 atoms, more than max_atoms=20" in " ".join(report["skipped"]["examples"]["too_many_atoms"])
    assert MPDataModule(**kwargs).max_atoms == DEFAULT_MAX_ATOMS
    raised = MPDataModule(**kwargs, max_atoms=27)
    raised.setup()  # another limit is another cache content: rebuilt, not reused
    assert raised.cache_status == "stale" and "mp-1011" in raised.dataset("all").ids


# ---------------------------------------------------------------------------------------------- size limits


def test_file_size_and_atom_limits_of_custom_folders_skip_and_count(tmp_path, data_dir):
    root = tmp_path / "crystals"
    root.mkdir()
    rows = []
    for i, s in enumerate(generate_structures(10, seed=2)):
        Structure(s.lattice, [site.specie.symbol for site in s], s.frac_coords).to(filename=str(root / f"c{i}.cif"))
        rows.append(f"c{i},{s.properties['ewald']}")
    big = nacl(0) * (3, 3, 3)  # 216 atoms
    big.to(filename=str(root / "big.vasp"), fmt="poscar")
    padded = nacl(0).to(fmt="cif") + "#" + "x" * int(DEFAULT_MAX_FILE_MB * 1e6) + "\n"  # a valid CIF, too large
    (root / "padded.cif").write_text(padded)
    (root / "id_prop.csv").write_text("\n".join([*rows, "big,1.0", "padded,2.0"]) + "\n")

    dm = CustomDataModule(root=str(root), max_atoms=200)
    dm.setup()
    report = json.loads(dm.report_path.read_text())
    assert report["skipped"]["counts"] == {"too_many_atoms": 1, "file_too_large": 1}
    assert "not parsed" in report["skipped"]["examples"]["file_too_large"][0]
    assert CustomDataModule(root=str(root)).max_file_mb == DEFAULT_MAX_FILE_MB

    raised = CustomDataModule(root=str(root), max_atoms=216, max_file_mb=2 * DEFAULT_MAX_FILE_MB)
    raised.setup()
    assert raised.cache_status == "stale" and {"big", "padded"} <= set(raised.dataset("all").ids)
    with pytest.raises(ValueError, match="max_file_mb must be positive"):
        CustomDataModule(root=str(root), max_file_mb=0)


def test_running_out_of_memory_on_one_structure_is_a_counted_skip(tmp_path, data_dir, monkeypatch):
    """A real out-of-memory cannot be provoked reliably here, so the parser raises MemoryError for one file."""
    import framer.data.custom as custom

    root = tmp_path / "crystals"
    root.mkdir()
    for i in range(10):
        nacl(0).to(filename=str(root / f"c{i}.vasp"), fmt="poscar")
    (root / "id_prop.csv").write_text("".join(f"c{i},{i}\n" for i in range(10)))
    real = custom.record_from_file

    def exhausted_on_c3(path, *args, **kwargs):
        if path.name == "c3.vasp":
            raise MemoryError
        return real(path, *args, **kwargs)

    monkeypatch.setattr(custom, "record_from_file", exhausted_on_c3)
    dm = CustomDataModule(root=str(root))
    dm.setup()
    assert json.loads(dm.report_path.read_text())["skipped"]["counts"] == {"out_of_memory": 1}
    assert "c3" not in dm.dataset("all").ids and len(dm.dataset("all")) == 9
