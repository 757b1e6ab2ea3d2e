"""The processed cache: content keys, checksums, atomic writes, hits, stale and corrupt rebuilds."""

from __future__ import annotations

import hashlib
import logging
import os

import numpy as np
import pytest

from framer.data import MPDataModule
from framer.data.cache import (
    CacheCorruptError,
    CacheStaleError,
    RecordStore,
    cache_key,
    load_or_build,
    read_cache,
    records_to_arrays,
    write_cache,
)
from framer.data.ewald import generate_records
from tests.data.fakes import assert_records_equal, fake_megnet_entries, write_jarvis_zip


@pytest.fixture(scope="module")
def records():
    return generate_records(6, seed=3)


def test_round_trip_is_memory_mapped_and_exact(tmp_path, records):
    path = tmp_path / "c.cache"
    write_cache(path, "k1", records_to_arrays(records), {"note": "x"})
    cache = read_cache(path, "k1")
    assert cache.meta == {"note": "x"}
    store = RecordStore(cache)
    assert len(store) == len(records)
    assert isinstance(cache.array("frac_coords"), np.memmap)
    for ours, theirs in zip(store, records):
        assert_records_equal(ours, theirs)
    assert store.ids == [r.id for r in records]
    # Workers get a picklable store that re-opens the file instead of copying arrays.
    import pickle

    clone = pickle.loads(pickle.dumps(store))
    assert_records_equal(clone[-1], records[-1])


def test_key_depends_on_every_part():
    base = cache_key(raw={"a.zip": "00"}, target="e_form", split={"seed": 123})
    assert base == cache_key(split={"seed": 123}, target="e_form", raw={"a.zip": "00"})
    assert base != cache_key(raw={"a.zip": "01"}, target="e_form", split={"seed": 123})
    assert base != cache_key(raw={"a.zip": "00"}, target="gap", split={"seed": 123})
    assert base != cache_key(raw={"a.zip": "00"}, target="e_form", split={"seed": 124})


def test_corrupt_truncated_and_stale_files_are_detected(tmp_path, records):
    path = tmp_path / "c.cache"
    write_cache(path, "k1", records_to_arrays(records))
    with pytest.raises(CacheStaleError):
        read_cache(path, "other-key")
    content = bytearray(path.read_bytes())
    content[-100] ^= 0xFF  # one flipped byte inside the payload
    path.write_bytes(bytes(content))
    with pytest.raises(CacheCorruptError, match="checksum"):
        read_cache(path, "k1")
    path.write_bytes(bytes(content[: len(content) - 64]))
    with pytest.raises(CacheCorruptError, match="truncated"):
        read_cache(path, "k1")
    path.write_bytes(b"garbage")
    with pytest.raises(CacheCorruptError, match="magic"):
        read_cache(path, "k1")


def test_write_is_atomic(tmp_path, records, monkeypatch):
    path = tmp_path / "c.cache"
    write_cache(path, "old", records_to_arrays(records[:2]))
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        write_cache(path, "new", records_to_arrays(records))
    assert path.read_bytes() == before  # the old file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.cache"]  # no temporary file left behind
    monkeypatch.undo()
    write_cache(path, "new", records_to_arrays(records))
    assert read_cache(path, "new").key == "new"


def test_load_or_build_statuses_and_logging(tmp_path, records, caplog):
    path = tmp_path / "c.cache"
    builds = []

    def build():
        builds.append(1)
        return records_to_arrays(records), {}

    caplog.set_level(logging.INFO, logger="framer.data")
    assert load_or_build(path, "k", build)[1] == "miss"
    assert load_or_build(path, "k", build)[1] == "hit"
    assert len(builds) == 1
    assert "cache hit" in caplog.text and "cache miss" in caplog.text
    assert load_or_build(path, "k", build, rebuild=True)[1] == "rebuild"
    caplog.clear()
    assert load_or_build(path, "k2", build)[1] == "stale"
    assert "stale cache" in caplog.text
    path.write_bytes(path.read_bytes()[:-10])
    caplog.clear()
    cache, status = load_or_build(path, "k2", build)
    assert status == "corrupt" and "corrupt cache" in caplog.text
    assert len(builds) == 4 and len(RecordStore(cache)) == len(records)


# --------------------------------------------------------------------------------------------- via DataModules


def _count_builds(monkeypatch):
    import framer.data.datamodules as dm

    calls = []
    real = dm.build_jarvis_target

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(dm, "build_jarvis_target", counting)
    return calls


def test_second_setup_is_a_hit_and_rebuild_cache_forces_a_build(megnet_raw, small_mp_kwargs, monkeypatch):
    calls = _count_builds(monkeypatch)
    first = MPDataModule(**small_mp_kwargs)
    first.prepare_data()
    first.setup("fit")
    assert first.cache_status == "miss" and len(calls) == 1
    second = MPDataModule(**small_mp_kwargs)
    second.setup("fit")
    assert second.cache_status == "hit" and len(calls) == 1
    assert second.split_fingerprints() == first.split_fingerprints()
    forced = MPDataModule(**small_mp_kwargs, rebuild_cache=True)
    forced.prepare_data()
    forced.setup("fit")  # prepare_data already rebuilt: setup must not build again
    assert forced.cache_status == "rebuild" and len(calls) == 2
    forced.prepare_data()  # e.g. a later trainer.test(datamodule=...): no second rebuild
    assert len(calls) == 2
    rebuilt_outside_trainer = MPDataModule(**small_mp_kwargs, rebuild_cache=True)
    rebuilt_outside_trainer.setup()  # no prepare_data, no Trainer: setup honours rebuild_cache itself
    assert rebuilt_outside_trainer.cache_status == "rebuild" and len(calls) == 3


def test_corrupt_cache_is_rebuilt_with_a_warning(megnet_raw, small_mp_kwargs, caplog):
    dm = MPDataModule(**small_mp_kwargs)
    dm.setup()
    path = dm.cache_path()
    content = bytearray(path.read_bytes())
    content[-200] ^= 0x01
    path.write_bytes(bytes(content))
    caplog.set_level(logging.WARNING, logger="framer.data")
    again = MPDataModule(**small_mp_kwargs)
    again.setup()
    assert again.cache_status == "corrupt" and "corrupt cache" in caplog.text
    assert again.split_fingerprints() == dm.split_fingerprints()
    assert read_cache(path).key  # rewritten and valid


def test_changed_raw_file_makes_the_cache_stale(megnet_raw, data_dir, small_mp_kwargs, caplog):
    dm = MPDataModule(**small_mp_kwargs)
    dm.setup()
    write_jarvis_zip(data_dir / "raw", "megnet", fake_megnet_entries(30, seed=99))
    caplog.set_level(logging.WARNING, logger="framer.data")
    again = MPDataModule(**small_mp_kwargs)
    again.setup()
    assert again.cache_status == "stale" and "stale cache" in caplog.text
    assert sum(again.split_sizes().values()) == 30
    # Another split specification is another cache file, so alternating settings do not thrash.
    other = MPDataModule(**{**small_mp_kwargs, "split_seed": 7})
    other.setup()
    assert other.cache_path() != again.cache_path() and other.cache_status == "miss"


def test_cache_is_used_when_the_raw_file_was_removed(megnet_raw, small_mp_kwargs, caplog):
    dm = MPDataModule(**small_mp_kwargs)
    dm.setup()
    megnet_raw.unlink()
    caplog.set_level(logging.WARNING, logger="framer.data")
    again = MPDataModule(**small_mp_kwargs)
    again.setup()
    assert again.cache_status == "hit-without-raw" and "not found; using the cache" in caplog.text
    assert again.split_fingerprints() == dm.split_fingerprints()


def test_caches_of_format_2_are_rebuilt_since_records_are_stored_in_their_reduced_cell(
    megnet_raw, small_mp_kwargs, monkeypatch, caplog
):
    import framer.data.cache as cache

    assert cache.FORMAT_VERSION >= 3  # 3: cells reduced, unphysical cells and size limits (other records)
    with monkeypatch.context() as patch:
        patch.setattr(cache, "FORMAT_VERSION", 2)  # a cache written by the previous framer
        MPDataModule(**small_mp_kwargs).setup()
    again = MPDataModule(**small_mp_kwargs)
    with caplog.at_level(logging.WARNING, logger="framer.data"):
        again.setup()
    assert again.cache_status == "stale" and f"format version 2 != {cache.FORMAT_VERSION}" in caplog.text
    assert read_cache(again.cache_path()).header["format_version"] == cache.FORMAT_VERSION


# --------------------------------------------------------------------------------------------- compatibility pin

#: Computed by the code of main at cfe6299, before the DataModules' arguments were deduplicated (issue 16).
PINNED = {
    "key": "8db9c5b3030b0ec10e520bba11f831b6c2617886a5051b31f5bc96a48a2faf90",
    "file_sha256": "801a86937891249001885eebc3e5ff46e29d72721b1033d0157f58d0dfd90171",
    "mp": ("aba147806226c6bf7bcbc844ae03c4766a28609ddb4896daf099aae81a54ac1c", "processed/megnet/e_form.cache"),
    "mp_split": (
        "ea311add94b5dfba93b9d011bf5170b8c343e8347856366002d24e09f695ca07",
        "processed/megnet/gap-split-f02c6daca6.cache",
    ),
    "jarvis": (
        "eba137401d33bc94da5aec1d9b8372663a9cab50e3cb0d9b2f53b855ed6ff121",
        "processed/dft_3d_2021/mbj_bandgap.cache",
    ),
    "ewald": (
        "20554453ecb7067ffc43b132c5c8914221be12efb6108dbbdd24fda9cf9d0af9",
        "processed/ewald/ewald_energy-n12-seed3-max8-split5.cache",
    ),
    "custom": "e9ea16aceac2a2b2d8a84527bd892d53feca781049aab6115bac7fea64774492",
}
FAKE_RAW = {"raw": {"megnet.json.zip": "0" * 64}}


def test_cache_keys_names_and_bytes_are_those_of_earlier_versions(tmp_path):
    """A regression pin, not a result worked out by hand: the constants in ``PINNED`` are what earlier code computed.

    A change to ``cache_key``, ``_cache_parts``, the cache file names or the header serialisation would rebuild every
    user's caches (minutes for MEGNet) and break ``hit-without-raw`` for users who deleted their raw files. If the
    format must change, bump ``FORMAT_VERSION`` and recompute the constants deliberately.
    """
    from framer.data import CustomDataModule, EwaldDataModule, JarvisDataModule

    assert (
        cache_key(dataset="megnet", target="e_form", split={"counts": [60000, 5000, None], "seed": 123}, x=1.5)
        == (PINNED["key"])
    )
    arrays = {
        "lattice": np.eye(3)[None] * 4.25,
        "offsets": np.array([0, 2], dtype=np.int64),
        "ids": np.array(["mp-1"], dtype="<U4"),
    }
    meta = {"key_parts": {"raw": None, "max_atoms": 1000, "ratio": 0.1, "name": "ä"}, "sizes": [1, 0, 0]}
    write_cache(tmp_path / "pin.cache", "k" * 64, arrays, meta)
    assert hashlib.sha256((tmp_path / "pin.cache").read_bytes()).hexdigest() == PINNED["file_sha256"]

    data = tmp_path / "data"
    modules = {
        "mp": MPDataModule(data_dir=str(data)),
        "mp_split": MPDataModule("gap", n_train=None, split_seed=7, max_atoms=500, data_dir=str(data)),
        "jarvis": JarvisDataModule("mbj_bandgap", data_dir=str(data)),
        "ewald": EwaldDataModule(num_crystals=12, seed=3, max_atoms=8, split_seed=5, data_dir=str(data)),
    }
    for name, dm in modules.items():
        key = cache_key(**{**dm._cache_parts(with_raw=False), **FAKE_RAW})
        assert (key, dm.cache_path().relative_to(data).as_posix()) == PINNED[name], name
    folder = tmp_path / "crystals"
    folder.mkdir()
    custom = CustomDataModule(str(folder), "half_a", split_seed=5, max_file_mb=2.0, data_dir=str(data))
    parts = {**custom._cache_parts(with_raw=False), "root": "crystals"}  # the absolute root differs per machine
    assert cache_key(**parts, **FAKE_RAW) == PINNED["custom"]
