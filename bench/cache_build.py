"""Cache builds at data-set scale and DataLoader delivery from a cache, measured on CPU.

``python -m bench.cache_build`` (from the repository root) writes ``bench/results/<host>-cache-build.{json,md}``:

1. **Synthetic raw files in the exact published format**: ``megnet.json.zip`` and ``jdft_3d-8-18-2021.json.zip``
   (a JSON list of records in a zip, what ``jarvis.db.figshare.data`` reads) with ``--count`` records each. Atoms per
   cell follow the log-normal stand-ins for the real sets (:data:`SIZE_MODELS`), the crystals are random triclinic
   cells with atoms on a jittered grid (:func:`bench.gpu_check.crystals.synthetic_record`), half of them with Cartesian
   coordinates, and the records carry the real field names (:func:`megnet_record`, :func:`dft3d_record`).
2. **Cache builds** through the DataModules (``prepare_data`` with ``rebuild_cache=True``), each in a fresh process,
   with every ``--workers`` value: wall and CPU seconds (the process and its worker processes), the build's phases
   (``build_timings``), peak memory (``ru_maxrss`` of the building process; the summed private memory of its worker
   processes, sampled every 50 ms from ``/proc`` by this process), load averages, and the sha256 of the cache file
   (it must not depend on the number of workers).
3. **Where the time goes**: one serial build under ``cProfile``; cumulative seconds of the main steps.
4. **Cost by cell size**: ``record_from_jarvis_atoms`` on cells of 2 to 128 atoms.
5. **Projection** to the full sets (69,239 and 55,723 records) from CPU seconds, serial and with 8 and 16 processes.
6. **DataLoader delivery**: crystals/s of the training loader from the megnet cache with 0, 1 and 2 workers, and the
   per-crystal cost of reading a record and of ``collate_records``.

The machine may be shared: every figure carries the load averages before and after, and projections use CPU
seconds. ``--compare FILE`` keeps the serial builds of an earlier results file (e.g. a run on an older commit: same
``--count`` and ``--seed``, so the same records) beside this run's.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import hashlib
import json
import os
import pstats
import resource
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from bench.gpu_check import crystals

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "bench" / "results"
FULL_SIZES = {"megnet": 69_239, "dft_3d_2021": 55_723}
TARGETS = {"megnet": "e_form", "dft_3d_2021": "formation_energy"}
#: Atoms per cell of each raw file: the bench tools' MEGNet-MP-like and JARVIS-like stand-ins
#: (:data:`bench.gpu_check.crystals.SIZE_DISTRIBUTIONS`). Neither is a fit to the real sets (no histogram is at hand
#: here); the cost by cell size (part 4) shows how little the distribution matters.
SIZE_MODELS = {"megnet": crystals.SIZE_DISTRIBUTIONS["mp"], "dft_3d_2021": crystals.SIZE_DISTRIBUTIONS["jarvis"]}
MIB = 2**20

# --------------------------------------------------------------------------------------------- synthetic raw files

#: Scalar fields of a dft_3d_2021 record besides the targets (real names; values here are random or "na").
DFT3D_SCALARS = (
    "spg_number", "slme", "magmom_oszicar", "spillage", "kpoint_length_unit", "maxdiff_mesh", "maxdiff_bz", "encut",
    "epsx", "epsy", "epsz", "mepsx", "mepsy", "mepsz", "magmom_outcar", "max_efg", "avg_elec_mass", "avg_hole_mass",
    "dfpt_piezo_max_eij", "dfpt_piezo_max_dij", "dfpt_piezo_max_dielectric", "dfpt_piezo_max_dielectric_electronic",
    "dfpt_piezo_max_dielectric_ionic", "max_ir_mode", "min_ir_mode", "n-Seebeck", "p-Seebeck", "n-powerfact",
    "p-powerfact", "ncond", "pcond", "nkappa", "pkappa", "exfoliation_energy", "density", "poisson", "nat",
    "bulk_modulus_kv", "shear_modulus_gv", "hse_gap", "Tc_supercon",
)  # fmt: skip


def atom_counts(dataset: str, count: int, seed: int) -> np.ndarray:
    """Atoms per cell of ``count`` synthetic records of ``dataset``."""
    return SIZE_MODELS[dataset].draw(count, np.random.default_rng([seed, 11, len(dataset)]))


def synthetic_atoms(num_atoms: int, rng: np.random.Generator, cartesian: bool) -> dict:
    """A JARVIS ``atoms`` dict of a random cell (:func:`bench.gpu_check.crystals.synthetic_record`)."""
    from jarvis.core.atoms import Atoms
    from pymatgen.core import Element

    record = crystals.synthetic_record(num_atoms, rng)
    coords = record.frac_coords @ record.lattice if cartesian else record.frac_coords
    symbols = [Element.from_Z(int(z)).symbol for z in record.atomic_numbers]
    # jarvis-tools writes the layout of the published files itself
    return Atoms(lattice_mat=record.lattice, coords=coords, elements=symbols, cartesian=cartesian).to_dict()


def megnet_record(i: int, atoms: dict, rng: np.random.Generator) -> dict:
    """A record laid out like ``megnet.json`` (moduli present for about one in eight, as GPa)."""
    elastic = rng.random() < 0.12
    return {
        "id": f"mp-{1000 + i}",
        "atoms": atoms,
        "e_form": float(rng.normal(-1.5, 1.0)),
        "gap pbe": float(abs(rng.normal(1.0, 1.5))),
        "bulk modulus": float(rng.uniform(10, 300)) if elastic else None,
        "shear modulus": float(rng.uniform(5, 200)) if elastic else None,
        "e_hull": float(abs(rng.normal(0.05, 0.1))),
        "mu_b": float(abs(rng.normal(0.0, 1.0))),
        "formula": "".join(sorted(set(atoms["elements"]))),
    }


def dft3d_record(i: int, atoms: dict, rng: np.random.Generator) -> dict:
    """A record laid out like ``jdft_3d-8-18-2021.json``: about 60 fields, many ``"na"``, some lists."""
    n = len(atoms["elements"])
    record = {
        "jid": f"JVASP-{10 + i}",
        "spg_symbol": "P1",
        "formula": "".join(sorted(set(atoms["elements"]))),
        "func": "OptB88vdW",
        "atoms": atoms,
        "formation_energy_peratom": float(rng.normal(-1.0, 1.0)),
        "optb88vdw_total_energy": float(rng.normal(-4.0, 2.0)),
        "optb88vdw_bandgap": float(abs(rng.normal(1.0, 1.0))),
        "mbj_bandgap": float(abs(rng.normal(1.5, 1.0))) if rng.random() < 0.33 else "na",
        "ehull": float(abs(rng.normal(0.1, 0.1))) if rng.random() < 0.99 else "na",
        "icsd": "",
        "typ": "bulk",
        "crys": "triclinic",
        "dimensionality": "3D-bulk",
        "reference": f"mp-{i}",
        "search": "-".join(sorted(set(atoms["elements"]))),
        "xml_data_link": f"https://www.ctcms.nist.gov/~knc6/static/JARVIS-DFT/JVASP-{10 + i}.xml",
        "raw_files": [f"OPT-Bulk-JVASP-{10 + i}.zip", "MAIN-RELAX-Bulk.zip", "MAIN-ELASTIC-Bulk.zip"],
        "elastic_tensor": rng.normal(0, 50, size=(6, 6)).round(4).tolist() if rng.random() < 0.35 else "na",
        "effective_masses_300K": {"p": rng.random(3).tolist(), "n": rng.random(3).tolist()}
        if rng.random() < 0.5
        else "na",
        "modes": rng.random(3 * n).round(3).tolist() if rng.random() < 0.25 else "na",
        "efg": "na",
        "spg": 1,
    }
    for key in DFT3D_SCALARS:
        record[key] = float(rng.normal()) if rng.random() < 0.5 else "na"
    return record


def write_raw(dataset: str, count: int, seed: int, raw_dir: Path) -> dict:
    """Write ``count`` synthetic records of ``dataset`` into ``raw_dir`` in the published zip layout."""
    from framer.data.sources import JARVIS_SOURCES

    start = time.perf_counter()
    sizes_of = SIZE_MODELS[dataset]
    sizes = atom_counts(dataset, count, seed)
    rng = np.random.default_rng([seed, 12, len(dataset)])
    make = megnet_record if dataset == "megnet" else dft3d_record
    raw_dir.mkdir(parents=True, exist_ok=True)
    source = JARVIS_SOURCES[dataset]
    path = raw_dir / source.filename
    json_bytes = 0
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf, zf.open(source.js_tag, "w") as member:
        for i, n in enumerate(sizes):
            atoms = synthetic_atoms(int(n), rng, cartesian=bool(i % 2))
            text = ("[" if i == 0 else ", ") + json.dumps(make(i, atoms, rng))
            member.write(text.encode())
            json_bytes += len(text)
        member.write(b"]")
    return {
        "path": str(path),
        "entries": count,
        "atoms": describe_sizes(sizes),
        "size_model": {"median": sizes_of.median, "sigma": sizes_of.sigma, "max": sizes_of.max_atoms},
        "zip_bytes": path.stat().st_size,
        "json_bytes": json_bytes + 1,
        "json_bytes_per_entry": round((json_bytes + 1) / count, 1),
        "write_s": round(time.perf_counter() - start, 2),
    }


def describe_sizes(sizes: np.ndarray) -> dict:
    return {
        "mean": round(float(np.mean(sizes)), 2),
        "median": float(np.median(sizes)),
        "p90": float(np.percentile(sizes, 90)),
        "p99": float(np.percentile(sizes, 99)),
        "max": int(np.max(sizes)),
        "total": int(np.sum(sizes)),
    }


# --------------------------------------------------------------------------------------------- measuring (children)


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def datamodule(dataset: str, data_dir: str, **settings: Any):
    """The DataModule of ``dataset`` over every record (80/10/10 split of the synthetic file)."""
    from framer.data import JarvisDataModule, MPDataModule

    cls = MPDataModule if dataset == "megnet" else JarvisDataModule
    return cls(target=TARGETS[dataset], data_dir=data_dir, n_train=None, n_val=None, n_test=None, **settings)


def warm_up() -> None:
    """Import what a build uses (torch, Lightning, pymatgen, scipy) before the clock starts: one small record."""
    import framer.data.datamodules  # noqa: F401
    from framer.data.structures import record_from_jarvis_atoms

    record_from_jarvis_atoms(synthetic_atoms(4, np.random.default_rng(0), cartesian=False), "warm-up")


def build_settings(spec: dict) -> dict:
    """``rebuild_cache`` and ``build_workers`` (left out for DataModules without it, e.g. an older commit's)."""
    import inspect

    from framer.data import MPDataModule

    settings: dict[str, Any] = {"rebuild_cache": True}
    if "build_workers" in inspect.signature(MPDataModule).parameters:
        settings["build_workers"] = spec["workers"]
    return settings


class WorkerMemory:
    """Samples the private memory (Private_Clean + Private_Dirty) of the children of process ``pid`` every 50 ms.

    Run from the benchmark's main process, so the sampling costs the measured process nothing.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_bytes = 0
        self.peak_count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> WorkerMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            total, count = 0, 0
            for pid in _children(self.pid):
                total += _private_bytes(pid)
                count += 1
            if total > self.peak_bytes:
                self.peak_bytes, self.peak_count = total, count


def _children(parent: int) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = Path(entry.path, "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
                    found.append(int(entry.name))
    return found


def _private_bytes(pid: int) -> int:
    total = 0
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                total += int(line.split()[1]) * 1024
    return total


def current_rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child_build(spec: dict) -> dict:
    """One cache build in this (fresh) process: times, memory, phases and the cache's hash."""
    warm_up()
    settings = build_settings(spec)
    dm = datamodule(spec["dataset"], spec["data_dir"], **settings)
    rss_before = current_rss()
    load_before = load_average()
    self0, children0 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    dm.prepare_data()
    wall = time.perf_counter() - start
    self1, children1 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_self = (self1.ru_utime + self1.ru_stime) - (self0.ru_utime + self0.ru_stime)
    cpu_children = (children1.ru_utime + children1.ru_stime) - (children0.ru_utime + children0.ru_stime)
    path = dm.cache_path()
    records = dm.split_sizes()
    return {
        "workers": spec["workers"],
        "resolved_workers": getattr(dm, "build_processes", None),
        "records": sum(records.values()),
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu_self + cpu_children, 3),
        "cpu_self_s": round(cpu_self, 3),
        "cpu_workers_s": round(cpu_children, 3),
        "rss_before_mib": round(rss_before / MIB, 1),
        "peak_rss_mib": round(self1.ru_maxrss * 1024 / MIB, 1),
        "load_before": load_before,
        "load_after": load_average(),
        "phases": getattr(dm, "build_timings", None),
        "cache_bytes": path.stat().st_size,
        "cache_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "cache_key": dm._store.cache.key,
    }


#: Steps reported from the profile: (label, file suffix, function name).
PROFILE_STEPS = (
    ("raw zip read + JSON parse (jarvis-tools)", "framer/data/sources.py", "load_jarvis_dataset"),
    ("missing-target filter", "framer/data/build.py", "filter_group"),
    ("records: convert and validate", "framer/data/build.py", "_convert_entry"),
    ("  element symbols", "framer/data/structures.py", "atomic_number"),
    ("  reduced cell (LLL + image counts)", "framer/data/cells.py", "reduce_cell"),
    ("    pymatgen LLL", "pymatgen/core/lattice.py", "get_lll_reduced_lattice"),
    ("  shortest lattice vector", "framer/data/cells.py", "shortest_lattice_vector"),
    ("  overlap check (k-d tree)", "framer/data/cells.py", "closest_pair_distance"),
    ("  image box", "framer/geometry.py", "image_box"),
    ("records -> columns", "framer/data/cache.py", "records_to_arrays"),
    ("cache write (sha256 + file)", "framer/data/cache.py", "write_cache"),
    ("cache read-back", "framer/data/cache.py", "read_cache"),
    ("raw file sha256 (cache key)", "framer/data/cache.py", "file_sha256"),
)


def child_profile(spec: dict) -> dict:
    """A serial build under cProfile: cumulative seconds of :data:`PROFILE_STEPS`."""
    warm_up()
    settings = build_settings(spec)
    dm = datamodule(spec["dataset"], spec["data_dir"], **settings)
    profile = cProfile.Profile()
    start = time.perf_counter()
    profile.runcall(dm.prepare_data)
    total = time.perf_counter() - start
    stats = pstats.Stats(profile).stats  # {(file, line, name): (cc, nc, tt, ct, callers)}
    steps = []
    for label, suffix, name in PROFILE_STEPS:
        cumulative = sum(
            ct
            for (file, _line, function), (_cc, _nc, _tt, ct, callers) in stats.items()
            if _match(file, suffix)
            and function == name
            and not any(_match(c[0], suffix) and c[2] == name for c in callers)
        )
        steps.append({"step": label, "s": round(cumulative, 3), "share": round(cumulative / total, 3)})
    return {"total_s": round(total, 3), "steps": steps, "load_after": load_average()}


def _match(file: str, suffix: str) -> bool:
    return file.replace(os.sep, "/").endswith(suffix)


def child_cost_by_size(spec: dict) -> dict:
    """CPU milliseconds of ``record_from_jarvis_atoms`` per record, by atoms per cell."""
    from framer.data.structures import record_from_jarvis_atoms

    rng = np.random.default_rng(5)
    out = []
    for n in spec["sizes"]:
        atoms = [synthetic_atoms(n, rng, cartesian=bool(i % 2)) for i in range(spec["repeats"])]
        record_from_jarvis_atoms(atoms[0], "warm-up")
        start = time.process_time()
        for i, a in enumerate(atoms):
            record_from_jarvis_atoms(a, f"x{i}")
        out.append({"atoms": n, "cpu_ms": round((time.process_time() - start) / len(atoms) * 1e3, 4)})
    return {"by_size": out, "repeats": spec["repeats"], "load_after": load_average()}


def child_loader(spec: dict) -> dict:
    """Crystals/s of the training DataLoader from an existing cache, and the per-crystal read and collate cost."""
    import torch

    from framer.data.batch import collate_records

    torch.set_num_threads(1)
    dm = datamodule(spec["dataset"], spec["data_dir"], batch_size=spec["batch_size"], num_workers=spec["workers"])
    dm.setup()
    loader = dm.train_dataloader()
    out: dict[str, Any] = {
        "workers": spec["workers"],
        "batch_size": spec["batch_size"],
        "pin_memory": bool(loader.pin_memory),
        "persistent_workers": bool(loader.persistent_workers),
        "prefetch_factor": loader.prefetch_factor,
        "load_before": load_average(),
    }
    iterator = iter(loader)
    next(iterator)  # worker start-up and first batch
    batches = min(spec["batches"], len(loader) - 1)
    self0 = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    crystals = sum(len(next(iterator)) for _ in range(batches))
    wall = time.perf_counter() - start
    self1 = resource.getrusage(resource.RUSAGE_SELF)
    out.update(
        batches=batches,
        crystals=crystals,
        wall_s=round(wall, 3),
        cpu_main_s=round((self1.ru_utime + self1.ru_stime) - (self0.ru_utime + self0.ru_stime), 3),
        crystals_per_s=round(crystals / wall, 1),
        load_after=load_average(),
    )
    if spec["workers"] == 0:  # in this process: what one crystal costs to read and to collate
        dataset = dm.train_dataset
        count = min(len(dataset), 20 * spec["batch_size"])
        start = time.process_time()
        records = [dataset[i] for i in range(count)]
        read = time.process_time() - start
        start = time.process_time()
        for k in range(0, count - spec["batch_size"] + 1, spec["batch_size"]):
            collate_records(records[k : k + spec["batch_size"]])
        collated = (count // spec["batch_size"]) * spec["batch_size"]
        out.update(
            read_us_per_crystal=round(read / count * 1e6, 1),
            collate_us_per_crystal=round((time.process_time() - start) / collated * 1e6, 1),
        )
    return out


CHILDREN = {"build": child_build, "profile": child_profile, "cost": child_cost_by_size, "loader": child_loader}


def run_child(kind: str, spec: dict, log) -> dict:
    """Run one measurement in a fresh interpreter (so peak memory and imports are its own)."""
    command = [sys.executable, "-m", "bench.cache_build", "--child", kind, json.dumps(spec)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=out, stderr=err, text=True)
        with WorkerMemory(child.pid) as workers:
            returncode = child.wait()
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    if returncode != 0:
        raise RuntimeError(f"{kind} {spec} failed:\n{stderr[-4000:]}")
    result = json.loads(stdout.strip().splitlines()[-1])
    if kind == "build":
        result["workers_peak_private_mib"] = round(workers.peak_bytes / MIB, 1)
        result["workers_seen"] = workers.peak_count
    log(f"  {kind} {json.dumps({k: v for k, v in spec.items() if k != 'data_dir'})}: {summary(kind, result)}")
    return result


def summary(kind: str, result: dict) -> str:
    if kind == "build":
        return (
            f"{result['records']} records, wall {result['wall_s']} s, cpu {result['cpu_s']} s, "
            f"peak {result['peak_rss_mib']} MiB (+workers {result['workers_peak_private_mib']} MiB), "
            f"load {result['load_before'][0]}->{result['load_after'][0]}"
        )
    if kind == "profile":
        return f"{result['total_s']} s profiled"
    if kind == "cost":
        return ", ".join(f"{r['atoms']}: {r['cpu_ms']} ms" for r in result["by_size"])
    return f"{result['crystals_per_s']} crystals/s"


# --------------------------------------------------------------------------------------------- projection


def projection(dataset: str, raw: dict, builds: list[dict], processes: list[int]) -> dict:
    """Seconds to build the full set, from CPU seconds scaled by the number of records.

    One process: the serial build's CPU seconds. ``P`` processes: the parallel build's own CPU seconds (reading and
    parsing the zip, filtering, splitting, forking, gathering the workers' columns, writing: all serial) plus its
    workers' CPU seconds divided by ``P``: idle cores as fast as these, perfect balance between the workers.
    """
    serial = next((b for b in builds if b["workers"] == 0), None)
    parallel = max(builds, key=lambda b: b["resolved_workers"] or 0)
    if serial is None or not (parallel["resolved_workers"] or 0) > 1:
        return {}
    scale = FULL_SIZES[dataset] / raw["entries"]
    out = {
        "full_entries": FULL_SIZES[dataset],
        "scale": round(scale, 3),
        "from_workers": parallel["resolved_workers"],
        "serial_cpu_s": round(serial["cpu_s"] * scale, 1),
        "parent_cpu_s": round(parallel["cpu_self_s"] * scale, 1),
        "workers_cpu_s": round(parallel["cpu_workers_s"] * scale, 1),
        "seconds": {"1": round(serial["cpu_s"] * scale, 1)},
    }
    for p in processes:
        out["seconds"][str(p)] = round((parallel["cpu_self_s"] + parallel["cpu_workers_s"] / p) * scale, 1)
    return out


# --------------------------------------------------------------------------------------------- report


def before_figures(earlier: dict) -> dict:
    """The serial builds of an earlier results file (``--compare``), kept in this one."""
    out = {key: earlier["system"][key] for key in ("git_commit", "date", "host")}
    out["datasets"] = {}
    for dataset, part in earlier.get("datasets", {}).items():
        serial = next((b for b in part["builds"] if b["workers"] in (0, None)), None)
        if serial:
            keep = ("records", "wall_s", "cpu_s", "peak_rss_mib", "rss_before_mib", "load_before", "load_after")
            out["datasets"][dataset] = {key: serial[key] for key in (*keep, "cache_sha256")}
            out["datasets"][dataset]["profile"] = part.get("profile")
    return out


def markdown(results: dict) -> str:
    system, settings = results["system"], results["settings"]
    lines = [
        "# Cache builds and DataLoader delivery (CPU)",
        "",
        f"`python -m bench.cache_build {' '.join(settings['argv'])}` on {system['host']} ({system['cpu']}, "
        f"{system['cpus_available']} CPUs available), commit {str(system['git_commit'])[:10]}"
        f"{' (uncommitted changes)' if system['git_dirty'] else ''}, {system['date']}; "
        f"load average {system['load_average_start']} at the start, {results['load_average_end']} at the end. "
        "Each build ran in a fresh process with `rebuild_cache=True`; CPU seconds include the worker processes.",
        "",
    ]
    for dataset, part in results["datasets"].items():
        raw = part["raw"]
        atoms, model = raw["atoms"], raw["size_model"]
        lines += [
            f"## {dataset}: {raw['entries']:,} synthetic records",
            "",
            f"Atoms per cell: mean {atoms['mean']}, median {atoms['median']:g}, 90th percentile {atoms['p90']:g}, "
            f"99th {atoms['p99']:g}, max {atoms['max']} (log-normal stand-in: median {model['median']:g}, "
            f"sigma {model['sigma']:g}, at most {model['max']}). JSON {raw['json_bytes'] / 1e6:.1f} MB "
            f"({raw['json_bytes_per_entry']:.0f} bytes per record), zip {raw['zip_bytes'] / 1e6:.1f} MB.",
            "",
            "| build_workers | wall s | CPU s (workers) | records/CPU s | records/wall s | peak RSS MiB (before) "
            "| workers' private MiB | load 1-min before→after | cache sha256 |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for b in part["builds"]:
            workers = b["workers"] if b["resolved_workers"] is None else f"{b['workers']} ({b['resolved_workers']})"
            lines.append(
                f"| {workers} | {b['wall_s']:.2f} | {b['cpu_s']:.2f} ({b['cpu_workers_s']:.2f}) | "
                f"{b['records'] / b['cpu_s']:.0f} | {b['records'] / b['wall_s']:.0f} | "
                f"{b['peak_rss_mib']:.0f} ({b['rss_before_mib']:.0f}) | {b['workers_peak_private_mib']:.0f} | "
                f"{b['load_before'][0]}→{b['load_after'][0]} | {b['cache_sha256'][:12]} |"
            )
        lines += ["", f"Caches identical for every worker count: **{part['identical']}**.", ""]
        serial = next((b for b in part["builds"] if b["workers"] == 0), None)
        if serial and serial.get("phases"):
            lines += [
                "Phases of the serial build (`build_timings`: seconds of the building process; total: building and "
                "writing, everything after the key):",
                "",
            ]
            lines += ["| phase | wall s | CPU s |", "|---|---|---|"]
            for name, phase in serial["phases"].items():
                lines.append(f"| {name} | {phase['wall_s']:.3f} | {phase['cpu_s']:.3f} |")
            lines.append("")
        if part.get("profile"):
            prof = part["profile"]
            earlier = (results.get("before", {}).get("datasets", {}).get(dataset) or {}).get("profile")
            before = {step["step"]: step for step in earlier["steps"]} if earlier else {}
            lines += [
                f"Where the time goes (one serial build under cProfile, {prof['total_s']:.2f} s in all"
                + (f"; before: {earlier['total_s']:.2f} s" if earlier else "")
                + "; cProfile inflates code made of many small calls, so shares are indicative):",
                "",
                "| step | s | share |" + (" s before | share before |" if before else ""),
                "|---|---|---|" + ("---|---|" if before else ""),
            ]
            for step in prof["steps"]:
                row = f"| {step['step']} | {step['s']:.3f} | {step['share']:.0%} |"
                if step["step"] in before:
                    row += f" {before[step['step']]['s']:.3f} | {before[step['step']]['share']:.0%} |"
                lines.append(row)
            lines.append("")
        proj = part.get("projection")
        if proj:
            cols = list(proj["seconds"])
            lines += [
                f"Projection to the full set ({proj['full_entries']:,} records: CPU seconds x{proj['scale']}; one "
                f"process: the serial build, {proj['serial_cpu_s']} s; P processes: the parent's CPU in the build "
                f"with {proj['from_workers']} workers, {proj['parent_cpu_s']} s, serial, plus the workers' "
                f"{proj['workers_cpu_s']} s / P; idle cores as fast as these):",
                "",
                "| processes | " + " | ".join(cols) + " |",
                "|---" * (len(cols) + 1) + "|",
                "| seconds | " + " | ".join(f"{proj['seconds'][c]:.0f}" for c in cols) + " |",
                "",
            ]
        before = results.get("before", {}).get("datasets", {}).get(dataset)
        if before and serial:
            same = "the same" if before["cache_sha256"] == serial["cache_sha256"] else "a different"
            lines += [
                f"Serial build of the same records at commit {str(results['before']['git_commit'])[:10]} "
                f"({results['before']['date']}, load {before['load_before'][0]}→{before['load_after'][0]}): "
                f"{before['records'] / before['cpu_s']:.0f} records/CPU s ({before['cpu_s']:.2f} CPU s, "
                f"{before['wall_s']:.2f} s wall, peak RSS {before['peak_rss_mib']:.0f} MiB); now "
                f"{serial['records'] / serial['cpu_s']:.0f} records/CPU s, {before['cpu_s'] / serial['cpu_s']:.2f}x "
                f"fewer CPU seconds, {same} cache file (sha256).",
                "",
            ]
    cost = results.get("cost_by_size")
    if cost:
        lines += [
            f"## Cost of one record by cell size (`record_from_jarvis_atoms`, {cost['repeats']} cells each)",
            "",
            "| atoms | " + " | ".join(str(r["atoms"]) for r in cost["by_size"]) + " |",
            "|---" * (len(cost["by_size"]) + 1) + "|",
            "| CPU ms | " + " | ".join(f"{r['cpu_ms']:.3f}" for r in cost["by_size"]) + " |",
            "",
        ]
    loader = results.get("loader")
    if loader:
        lines += [
            f"## Training DataLoader from the {loader['dataset']} cache (batch {loader['batch_size']}, one torch "
            "thread, CPU: no pinning)",
            "",
            "| num_workers | crystals/s | batches | main-process CPU s | persistent_workers | prefetch_factor "
            "| load before→after |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in loader["runs"]:
            lines.append(
                f"| {r['workers']} | {r['crystals_per_s']:.0f} | {r['batches']} | {r['cpu_main_s']:.2f} | "
                f"{r['persistent_workers']} | {r['prefetch_factor']} | {r['load_before'][0]}→{r['load_after'][0]} |"
            )
        zero = next((r for r in loader["runs"] if r["workers"] == 0), None)
        if zero:
            lines += [
                "",
                f"In one process a crystal costs {zero['read_us_per_crystal']:.0f} µs to read from the memory-mapped "
                f"cache and {zero['collate_us_per_crystal']:.0f} µs to collate (CPU time).",
            ]
        lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- main


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.cache_build", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--count", type=int, default=10_000, help="synthetic records per data set (default 10000)")
    p.add_argument("--datasets", nargs="+", choices=list(FULL_SIZES), default=list(FULL_SIZES))
    p.add_argument("--workers", nargs="+", type=int, default=[0, 2], help="build_workers values (default 0 2)")
    p.add_argument("--project", nargs="+", type=int, default=[8, 16], help="processes to project for (default 8 16)")
    p.add_argument("--loader-workers", nargs="*", type=int, default=[0, 1, 2], help="DataLoader num_workers values")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--loader-batches", type=int, default=40, help="timed batches per loader run")
    p.add_argument("--no-profile", action="store_true", help="skip the cProfile run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", help="file stem (default: <host>-cache-build; <host>-cache-build-quick below 10000)")
    p.add_argument("--out", type=Path, default=RESULTS_DIR)
    p.add_argument("--compare", type=Path, help="an earlier results JSON whose serial builds to show beside")
    p.add_argument("--child", nargs=2, metavar=("KIND", "SPEC"), help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.child:
        kind, spec = args.child
        print(json.dumps(CHILDREN[kind](json.loads(spec))))
        return 0
    from bench.speed.runner import system_info

    def log(line: str) -> None:
        print(line, flush=True)

    results: dict[str, Any] = {
        "system": system_info(),
        "settings": {k: v.name if isinstance(v, Path) else v for k, v in vars(args).items()},  # no machine paths
        "datasets": {},
    }
    results["settings"]["argv"] = sys.argv[1:] if argv is None else argv
    with tempfile.TemporaryDirectory(prefix="cache-build-") as scratch:
        for dataset in args.datasets:
            data_dir = Path(scratch) / dataset
            log(f"{dataset}: writing {args.count} synthetic records")
            raw = write_raw(dataset, args.count, args.seed, data_dir / "raw")
            log(f"  {raw}")
            spec = {"dataset": dataset, "data_dir": str(data_dir)}
            builds = [run_child("build", {**spec, "workers": w}, log) for w in args.workers]
            part: dict[str, Any] = {
                "raw": raw,
                "builds": builds,
                "identical": len({(b["cache_sha256"], b["cache_key"]) for b in builds}) == 1,
            }
            if not args.no_profile:
                part["profile"] = run_child("profile", {**spec, "workers": 0}, log)
            part["projection"] = projection(dataset, raw, builds, args.project)
            results["datasets"][dataset] = part
            if dataset == args.datasets[0] and args.loader_workers:
                runs = [
                    run_child(
                        "loader",
                        {**spec, "workers": w, "batch_size": args.batch_size, "batches": args.loader_batches},
                        log,
                    )
                    for w in args.loader_workers
                ]
                results["loader"] = {"dataset": dataset, "batch_size": args.batch_size, "runs": runs}
    results["cost_by_size"] = run_child("cost", {"sizes": [2, 8, 32, 128], "repeats": 200}, log)
    results["load_average_end"] = load_average()
    if args.compare:
        results["before"] = before_figures(json.loads(args.compare.read_text()))
    name = args.name or results["system"]["host"] + "-cache-build" + ("" if args.count >= 10_000 else "-quick")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / f"{name}.md").write_text(markdown(results) + "\n")
    log(f"wrote {args.out / name}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
