"""Small files in the exact published formats, for tests that must not download anything (imported as
``tests.data.fakes``: the repository root is on the test path).

- :func:`write_jarvis_zip`: ``<raw>/<js_tag>.zip`` holding a JSON list of records (what jarvis-tools reads).
- :func:`fake_megnet_entries` / :func:`fake_dft3d_entries`: records with the real field names, JARVIS ``atoms``
  dicts and ``"na"`` for missing values.
- :func:`write_moduli_pickles`: Matformer-style ``{bulk,shear}_megnet_{split}.pkl`` lists with numpy scalars.
"""

from __future__ import annotations

import json
import math
import pickle
import zipfile
from pathlib import Path

import numpy as np

from framer.data.sources import JARVIS_SOURCES, moduli_filename

_ELEMENTS = ["Li", "Na", "Mg", "Al", "Si", "O", "S", "Cl", "Ti", "Fe", "Cu", "Zn", "Ga", "Sr", "Ba", "Bi"]
_SITES = np.array([[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0, 0], [0, 0.5, 0.5], [0, 0.5, 0], [0.5, 0, 0.5]])


def jarvis_atoms_dict(lattice, coords, elements, cartesian: bool = False) -> dict:
    """An ``atoms`` dict laid out like ``jarvis.core.atoms.Atoms.to_dict()``."""
    lattice = np.asarray(lattice, dtype=float)
    lengths = np.linalg.norm(lattice, axis=1)

    def angle(u, v):
        return float(np.degrees(np.arccos(np.dot(u, v) / np.linalg.norm(u) / np.linalg.norm(v))))

    return {
        "lattice_mat": lattice.tolist(),
        "coords": np.asarray(coords, dtype=float).tolist(),
        "elements": list(elements),
        "abc": lengths.tolist(),
        "angles": [angle(lattice[1], lattice[2]), angle(lattice[0], lattice[2]), angle(lattice[0], lattice[1])],
        "cartesian": cartesian,
        "props": ["" for _ in elements],
    }


def random_atoms(rng: np.random.Generator, cartesian: bool = False) -> dict:
    """A small valid crystal (1-6 atoms on well-separated sites of a slightly skewed cell) as an atoms dict."""
    n = int(rng.integers(1, 7))
    lattice = np.diag(rng.uniform(3.5, 6.0, size=3)) + rng.uniform(-0.4, 0.4, size=(3, 3)) * (1 - np.eye(3))
    frac = _SITES[:n] + rng.uniform(-0.02, 0.02, size=(n, 3))
    elements = [str(e) for e in rng.choice(_ELEMENTS, size=n)]
    coords = frac @ lattice if cartesian else frac
    return jarvis_atoms_dict(lattice, coords, elements, cartesian)


def fake_megnet_entries(n: int, seed: int = 0) -> list[dict]:
    """Records shaped like ``megnet.json`` (``id``, ``atoms``, ``e_form``, ``gap pbe``, moduli in GPa...)."""
    rng = np.random.default_rng(seed)
    entries = []
    for i in range(n):
        entries.append(
            {
                "id": f"mp-{1000 + i}",
                "atoms": random_atoms(rng, cartesian=bool(i % 3 == 0)),
                "e_form": float(rng.normal(-1.5, 1.0)),
                "gap pbe": float(abs(rng.normal(1.0, 1.5))),
                "bulk modulus": float(rng.uniform(10, 300)) if i % 4 else None,
                "shear modulus": float(rng.uniform(5, 200)) if i % 4 else None,
                "formula": "X",
            }
        )
    return entries


def fake_dft3d_entries(n: int, seed: int = 0) -> list[dict]:
    """Records shaped like ``jdft_3d-8-18-2021.json``; ``mbj_bandgap`` is often and ``ehull`` sometimes ``"na"``."""
    rng = np.random.default_rng(seed)
    entries = []
    for i in range(n):
        entries.append(
            {
                "jid": f"JVASP-{10 + i}",
                "atoms": random_atoms(rng, cartesian=bool(i % 2)),
                "formation_energy_peratom": float(rng.normal(-1.0, 1.0)),
                "optb88vdw_total_energy": float(rng.normal(-4.0, 2.0)),
                "optb88vdw_bandgap": float(abs(rng.normal(1.0, 1.0))),
                "mbj_bandgap": float(abs(rng.normal(1.5, 1.0))) if i % 3 == 0 else "na",
                "ehull": float(abs(rng.normal(0.1, 0.1))) if i % 7 != 5 else "na",
            }
        )
    return entries


def write_jarvis_zip(raw_dir: str | Path, dataset: str, entries: list) -> Path:
    """Write ``<raw_dir>/<js_tag>.zip`` with member ``<js_tag>`` holding ``entries`` as JSON."""
    source = JARVIS_SOURCES[dataset]
    raw_dir = Path(raw_dir)
    raw_dir.mkdir(parents=True, exist_ok=True)
    path = raw_dir / source.filename
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(source.js_tag, json.dumps(entries))
    return path


def write_moduli_pickles(
    raw_dir: str | Path, prop: str = "bulk", sizes: tuple[int, int, int] = (12, 4, 4), seed: int = 0
) -> dict[str, Path]:
    """Write ``<prop>_megnet_{train,val,test}.pkl``: lists of ``{"id", "atoms", "<prop> modulus": np.float64}``."""
    rng = np.random.default_rng(seed)
    raw_dir = Path(raw_dir)
    raw_dir.mkdir(parents=True, exist_ok=True)
    paths, k = {}, 0
    for split, size in zip(("train", "val", "test"), sizes):
        items = []
        for _ in range(size):
            items.append(
                {
                    "id": f"mp-{5000 + k}",
                    "atoms": random_atoms(rng),
                    f"{prop} modulus": np.float64(rng.uniform(0.8, 2.6)),
                }
            )
            k += 1
        path = raw_dir / moduli_filename(prop, split)
        path.write_bytes(pickle.dumps(items, protocol=4))
        paths[split] = path
    return paths


def corrupt_entry(entry: dict, reason: str) -> None:
    """Break an entry's structure in the way ``reason`` (a skip-report code) names, in place."""
    atoms = entry["atoms"]
    if reason == "missing_atoms":
        del entry["atoms"]
    elif reason == "nan_coordinate":
        atoms["coords"][0][1] = math.nan
    elif reason == "singular_lattice":
        atoms["lattice_mat"][2] = list(atoms["lattice_mat"][1])
    elif reason == "unknown_element":
        atoms["elements"][0] = "Xx"
    elif reason == "overlapping_atoms":
        atoms["elements"] = atoms["elements"][:1] * 2
        atoms["coords"] = [atoms["coords"][0], list(atoms["coords"][0])]
    elif reason == "no_atoms":
        atoms["elements"], atoms["coords"] = [], []
    else:
        raise ValueError(reason)


def assert_records_equal(a, b) -> None:
    """Two records hold identical ids, arrays and targets."""
    assert a.id == b.id
    np.testing.assert_array_equal(a.lattice, b.lattice)
    np.testing.assert_array_equal(a.frac_coords, b.frac_coords)
    np.testing.assert_array_equal(a.atomic_numbers, b.atomic_numbers)
    assert a.target == b.target or (math.isnan(a.target) and math.isnan(b.target))
