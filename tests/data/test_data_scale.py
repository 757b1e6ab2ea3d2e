"""Data at scale: cache builds in several processes give the serial build's bytes; loaders are set up to feed a GPU."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from framer.data import (
    CrystalBatch,
    CustomDataModule,
    DataError,
    JarvisDataModule,
    MPDataModule,
    collate_records,
    parallel,
)
from framer.data.cache import concatenate_columns, records_to_arrays
from framer.data.cells import image_count
from framer.data.sources import load_jarvis_dataset
from framer.geometry import image_box
from framer.rundir import RunDir
from tests.data.fakes import corrupt_entry, fake_dft3d_entries, fake_megnet_entries, write_jarvis_zip

LINUX = sys.platform.startswith("linux")
REPO = Path(__file__).resolve().parents[2]


def _megnet_with_defects(n: int) -> list[dict]:
    """``n`` megnet records, some with missing targets or malformed structures (all through the skip report)."""
    entries = fake_megnet_entries(n, seed=11)
    reasons = ["nan_coordinate", "singular_lattice", "unknown_element", "overlapping_atoms", "no_atoms"]
    for k, i in enumerate(range(5, n, 37)):
        corrupt_entry(entries[i], reasons[k % len(reasons)])
    for i in range(17, n, 61):
        entries[i]["e_form"] = "na"
    return entries


class PoolSpy:
    """Counts the process pools :mod:`framer.data.parallel` starts (each is still the real one)."""

    def __init__(self, monkeypatch):
        self.started = 0
        real = parallel.concurrent.futures.ProcessPoolExecutor

        def spy(*args, **kwargs):
            self.started += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(parallel.concurrent.futures, "ProcessPoolExecutor", spy)


def _build(cls, workers: int, **settings) -> tuple[bytes, str, str, dict]:
    dm = cls(n_train=None, n_val=None, n_test=None, build_workers=workers, rebuild_cache=True, **settings)
    dm.prepare_data()
    path = dm.cache_path()
    return path.read_bytes(), dm._store.cache.key, dm.report_path.read_text(), dm.build_timings


@pytest.mark.skipif(not LINUX, reason="worker processes are forked on Linux only")
def test_parallel_build_writes_the_serial_cache_byte_for_byte_under_the_same_key(data_dir, monkeypatch):
    write_jarvis_zip(data_dir / "raw", "megnet", _megnet_with_defects(330))
    pools = PoolSpy(monkeypatch)
    serial = _build(MPDataModule, 0)
    assert pools.started == 0
    for workers in (2, 3):
        pools.started = 0
        parallel_build = _build(MPDataModule, workers)
        assert pools.started == 1  # the build ran in a pool of worker processes
        assert parallel_build[0] == serial[0]  # the cache file, byte for byte
        assert parallel_build[1] == serial[1]  # the cache key
        assert parallel_build[2] == serial[2]  # the skip report (reasons, counts, first ids in order)
    report = json.loads(serial[2])
    assert report["skipped"]["total"] >= 8 and report["missing_target"]["total"] >= 5
    assert {"key", "read", "convert", "total"} <= set(serial[3])  # phases timed (never stored in the cache)
    # a cache built with 3 workers is a hit for a DataModule asking for 0
    hit = MPDataModule(n_train=None, n_val=None, n_test=None, build_workers=0)
    hit.prepare_data()
    assert hit.cache_status == "hit"


@pytest.mark.skipif(not LINUX, reason="worker processes are forked on Linux only")
def test_parallel_builds_of_jarvis_targets_and_custom_folders_match_the_serial_ones(data_dir, tmp_path):
    entries = fake_dft3d_entries(300, seed=4)
    corrupt_entry(entries[40], "overlapping_atoms")
    write_jarvis_zip(data_dir / "raw", "dft_3d_2021", entries)
    for target in ("formation_energy", "mbj_bandgap"):
        assert _build(JarvisDataModule, 2, target=target)[:3] == _build(JarvisDataModule, 0, target=target)[:3]

    from pymatgen.core import Lattice, Structure

    folder = tmp_path / "folder"
    folder.mkdir()
    rows = []
    for i, atoms in enumerate(e["atoms"] for e in fake_megnet_entries(140, seed=2)):
        lattice = Lattice(atoms["lattice_mat"])
        structure = Structure(lattice, atoms["elements"], atoms["coords"], coords_are_cartesian=atoms["cartesian"])
        structure.to(filename=str(folder / f"s{i}.vasp"), fmt="poscar")
        rows.append(f"s{i}.vasp,{i * 0.01}")
    (folder / "s7.vasp").write_text("not a structure")
    (folder / "id_prop.csv").write_text("\n".join(rows) + "\n")

    def custom(workers: int) -> tuple[bytes, str]:
        dm = CustomDataModule(str(folder), build_workers=workers, rebuild_cache=True)
        dm.prepare_data()
        return dm.cache_path().read_bytes(), dm.report_path.read_text()

    assert custom(2) == custom(0)


@pytest.mark.skipif(not LINUX, reason="worker processes are forked on Linux only")
def test_chunks_run_in_worker_processes_in_order_and_their_failures_reach_the_caller():
    parts = parallel.map_chunks(lambda chunk: [(os.getpid(), x) for x in chunk], range(300), 3)
    flat = [item for part in parts for item in part]
    assert [x for _, x in flat] == list(range(300))  # input order
    assert len(parts) > 1 and os.getpid() not in {pid for pid, _ in flat}
    assert parallel.map_chunks(len, range(300), 0) == [300]  # no workers: one chunk, in this process

    def bad(chunk):
        if 150 in chunk:
            raise ValueError("record 150 is bad")
        return len(chunk)

    with pytest.raises(ValueError, match="record 150"):
        parallel.map_chunks(bad, range(300), 2)
    with pytest.raises(DataError, match=r"worker process died.*build_workers"):
        parallel.map_chunks(lambda chunk: os._exit(3), range(300), 2)  # e.g. killed for lack of memory


def test_build_workers_default_and_validation(monkeypatch, data_dir):
    monkeypatch.setattr(parallel, "available_cpus", lambda: 32)
    assert parallel.resolve_workers(None) == 8
    monkeypatch.setattr(parallel, "available_cpus", lambda: 2)
    assert parallel.resolve_workers(None) == 2 and parallel.resolve_workers(0) == 0
    assert MPDataModule().build_processes == 2 and MPDataModule(build_workers=5).build_processes == 5
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="build_workers"):
            MPDataModule(build_workers=bad)


def test_concatenated_columns_equal_the_columns_of_all_records_at_once():
    from framer.data.structures import record_from_jarvis_atoms

    entries = fake_megnet_entries(40, seed=9)
    records = [record_from_jarvis_atoms(e["atoms"], "x" * (1 + i % 7), e["e_form"]) for i, e in enumerate(entries)]
    whole = records_to_arrays(records)
    rng = np.random.default_rng(0)
    for _ in range(5):
        cuts = sorted(rng.integers(0, len(records), size=4).tolist())  # empty parts included
        parts = [records_to_arrays(records[a:b]) for a, b in zip([0, *cuts], [*cuts, len(records)])]
        joined = concatenate_columns(parts)
        assert list(joined) == list(whole)
        for name in whole:
            assert joined[name].dtype == whole[name].dtype, name
            np.testing.assert_array_equal(joined[name], whole[name])


def test_image_count_is_the_image_box_volume_and_infinite_for_degenerate_cells():
    rng = np.random.default_rng(1)
    for _ in range(200):
        lattice = rng.normal(size=(3, 3)) * rng.uniform(0.2, 20)
        if abs(np.linalg.det(lattice)) > 1e-6:
            assert image_count(lattice) == float(np.prod(2 * image_box(lattice) + 1))
    assert image_count(np.diag([1e-200, 1e-200, 1.0])) == np.inf  # a count beyond the float range
    assert image_count(np.full((3, 3), np.nan)) == np.inf


# ---------------------------------------------------------------------------------------------- loaders


def _loaders(dm) -> list:
    return [dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader(), dm.predict_dataloader()]


def test_loader_settings_pinning_persistent_workers_and_prefetch(megnet_raw, small_mp_kwargs):
    assert not torch.cuda.is_available()  # this machine: pinning is off by default
    for loader in _loaders(MPDataModule(**small_mp_kwargs)):
        assert loader.pin_memory is False and loader.persistent_workers is False and loader.num_workers == 0
    for loader in _loaders(MPDataModule(**small_mp_kwargs, num_workers=2, pin_memory=True)):
        assert loader.pin_memory is True and loader.persistent_workers is True
        assert loader.num_workers == 2 and loader.prefetch_factor == 2
    for loader in _loaders(MPDataModule(**small_mp_kwargs, num_workers=1, pin_memory=False)):
        assert loader.pin_memory is False and loader.persistent_workers is True


def test_auto_pinning_follows_cuda_availability(megnet_raw, small_mp_kwargs, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert MPDataModule(**small_mp_kwargs).pins_memory is True
    assert MPDataModule(**small_mp_kwargs, pin_memory=False).pins_memory is False


def test_batches_go_to_a_gpu_without_blocking_and_stay_exact_on_the_cpu(megnet_raw, small_mp_kwargs, monkeypatch):
    dm = MPDataModule(**small_mp_kwargs)
    batch = collate_records([dm.train_dataset[i] for i in range(3)])
    moved = dm.transfer_batch_to_device(batch, torch.device("cpu"), 0)
    assert isinstance(moved, CrystalBatch) and moved.ids == batch.ids
    torch.testing.assert_close(moved.pos, batch.pos, rtol=0, atol=0)
    calls = []
    monkeypatch.setattr(CrystalBatch, "to", lambda self, *args, **kwargs: calls.append((args, kwargs)) or self)
    dm.transfer_batch_to_device(batch, torch.device("cuda", 0), 0)  # nothing is copied: `to` is recorded
    dm.transfer_batch_to_device(batch, torch.device("cpu"), 0)
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert calls == [((cuda,), {"non_blocking": True}), ((cpu,), {"non_blocking": False})]
    other = {"x": torch.ones(2)}  # anything else: Lightning's default
    assert dm.transfer_batch_to_device(other, torch.device("cpu"), 0)["x"].sum() == 2


# ---------------------------------------------------------------------------------------------- the benchmark tool


def _tool():
    """bench/cache_build.py, loaded by path (the name ``bench`` is also the tests/bench package's)."""
    spec = importlib.util.spec_from_file_location("cache_build_tool", REPO / "bench" / "cache_build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("dataset", ["megnet", "dft_3d_2021"])
def test_benchmark_raw_files_are_in_the_published_layout_and_build(dataset, data_dir):
    tool = _tool()
    raw = tool.write_raw(dataset, 40, seed=1, raw_dir=data_dir / "raw")
    entries = load_jarvis_dataset(dataset)  # jarvis-tools' own reader
    assert len(entries) == raw["entries"] == 40
    with zipfile.ZipFile(data_dir / "raw" / Path(raw["path"]).name) as zf:
        assert raw["json_bytes"] == len(zf.read(zf.namelist()[0]))
    sizes = [len(e["atoms"]["elements"]) for e in entries]
    assert raw["atoms"]["total"] == sum(sizes) and raw["atoms"]["max"] <= tool.SIZE_MODELS[dataset].max_atoms
    assert {True, False} == {e["atoms"]["cartesian"] for e in entries}
    dm = tool.datamodule(dataset, str(data_dir), build_workers=0)
    dm.prepare_data()
    assert sum(dm.split_sizes().values()) == 40  # every synthetic crystal is a valid record


@pytest.mark.slow
def test_ddp_fit_builds_in_worker_processes_on_rank_zero_and_feeds_persistent_loader_workers(tmp_path):
    """Two gloo ranks through the real entry point: rank 0 builds the cache with two processes, both read it."""
    import subprocess

    data = tmp_path / "data"
    write_jarvis_zip(data / "raw", "megnet", _megnet_with_defects(330))
    env = {
        **os.environ,
        "FRAMER_DATA_DIR": str(data),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO),
    }
    conf = REPO / "conf"
    configs = [conf / "default.yaml", conf / "data" / "mp.yaml", conf / "debug" / "tiny_model.yaml"]
    args = [arg for path in [*configs, conf / "trainer" / "ddp.yaml"] for arg in ("--config", str(path))]
    args += ["--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.max_epochs=1"]
    args += ["--trainer.enable_progress_bar=false", "--model.init_args.swa_epochs=1", "--tracking.run_name=ddp"]
    args += [f"--data.init_args.{k}=null" for k in ("n_train", "n_val", "n_test")]
    args += ["--data.init_args.batch_size=16", "--data.init_args.num_workers=1", "--data.init_args.build_workers=2"]
    result = subprocess.run(
        [sys.executable, "-m", "framer.cli", "fit", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in result.stdout + result.stderr
    _assert_serial_bytes(tmp_path, data)
    assert math.isfinite(RunDir(tmp_path / "runs" / "ddp" / "version_0").metric("test/mae"))


def _assert_serial_bytes(tmp_path, data):
    """The megnet cache under ``data`` equals, byte for byte, the one a single process builds; that DataModule."""
    serial = MPDataModule(n_train=None, n_val=None, n_test=None, data_dir=str(tmp_path / "serial"), build_workers=0)
    (tmp_path / "serial" / "raw").mkdir(parents=True)
    (tmp_path / "serial" / "raw" / "megnet.json.zip").write_bytes((data / "raw" / "megnet.json.zip").read_bytes())
    serial.prepare_data()
    built = next((data / "processed" / "megnet").glob("*.cache"))
    assert built.read_bytes() == serial.cache_path().read_bytes()
    return serial


CONCURRENT_BUILD = """
import sys, time
from pathlib import Path
from framer.data import MPDataModule

dm = MPDataModule(n_train=None, n_val=None, n_test=None, build_workers=2, data_dir=sys.argv[1])
Path(sys.argv[2]).touch()  # imported: ready
while not Path(sys.argv[3]).exists():
    time.sleep(0.01)
dm.prepare_data()
print(dm.cache_status, sum(dm.split_sizes().values()))
"""


@pytest.mark.slow
@pytest.mark.skipif(not LINUX, reason="worker processes are forked on Linux only")
def test_two_runs_building_the_same_cache_at_once_both_succeed_and_leave_the_serial_bytes(tmp_path):
    import subprocess

    data = tmp_path / "data"
    write_jarvis_zip(data / "raw", "megnet", _megnet_with_defects(330))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    go = tmp_path / "go"
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", CONCURRENT_BUILD, str(data), str(tmp_path / f"ready{i}"), str(go)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    while not all((tmp_path / f"ready{i}").exists() for i in range(2)):
        assert all(run.poll() is None for run in runs), [run.communicate() for run in runs]
        time.sleep(0.05)
    go.touch()  # both build now, each with two worker processes
    outputs = [run.communicate(timeout=600) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    serial = _assert_serial_bytes(tmp_path, data)
    assert not list((data / "processed" / "megnet").glob(".*.tmp"))  # no temporary file left behind
    records = str(sum(serial.split_sizes().values()))
    statuses = [out.split()[-2] for out, _ in outputs]
    assert [out.split()[-1] for out, _ in outputs] == [records, records], outputs
    assert "miss" in statuses and set(statuses) <= {"miss", "hit"}  # (a hit if the other run had finished first)
