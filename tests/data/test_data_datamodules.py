"""MP and JARVIS DataModules on fixture files in the published formats: filtering, splits, reports, loaders."""

from __future__ import annotations

import inspect
import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import framer.data
from framer.data import CrystalBatch, CrystalDataModule, DataError, DataNotFoundError, JarvisDataModule, MPDataModule
from framer.data.sources import load_jarvis_dataset
from framer.data.splits import PaperSplit, id_fingerprint, paper_split, split_fingerprint

REPO = Path(__file__).resolve().parents[2]


def test_mp_filters_before_splitting_and_skips_malformed_records(megnet_raw, megnet_layout, small_mp_kwargs):
    dm = MPDataModule(**small_mp_kwargs)
    dm.setup()
    entries = load_jarvis_dataset("megnet")
    kept = [i for i in range(len(entries)) if i not in megnet_layout["missing"]]
    assert len(kept) == 50
    expected = paper_split(len(kept))
    malformed_ids = {entries[i]["id"] for i in megnet_layout["malformed"]}
    for name, positions in expected.items():
        want = [entries[kept[p]]["id"] for p in positions if entries[kept[p]]["id"] not in malformed_ids]
        assert dm.split_ids()[name] == want  # paper membership and order survive the skips
    assert sum(dm.split_sizes().values()) == 50 - len(megnet_layout["malformed"])
    train_positions = [p for p in expected["train"] if entries[kept[p]]["id"] not in malformed_ids]
    assert dm.split_fingerprints()["train"] == split_fingerprint(train_positions)
    assert dm.split_fingerprints(raw=True)["train"] == split_fingerprint([kept[p] for p in train_positions])
    record = dm.train_dataset[0]
    source = next(e for e in entries if e["id"] == record.id)
    assert record.target == source["e_form"]


def test_skip_report_is_written_next_to_the_cache(megnet_raw, megnet_layout, small_mp_kwargs):
    dm = MPDataModule(**small_mp_kwargs)
    dm.setup()
    report = json.loads(dm.report_path.read_text())
    assert dm.report_path.parent == dm.cache_path().parent
    expected_reasons = {reason: 1 for reason in megnet_layout["malformed"].values()}
    assert report["skipped"]["counts"] == expected_reasons
    assert report["skipped"]["examples"]["overlapping_atoms"][0].startswith("mp-1027")
    assert report["missing_target"]["total"] == len(megnet_layout["missing"])
    assert report["raw_entries"] == megnet_layout["size"] and report["kept"] == 44
    assert dm.summary()["skipped"] == expected_reasons


def test_gap_target_reads_the_gap_pbe_field_and_shares_the_split(megnet_raw, small_mp_kwargs):
    e_form = MPDataModule("e_form", **small_mp_kwargs)
    gap = MPDataModule("gap", **small_mp_kwargs)
    assert gap.target_units == "eV" and e_form.target_units == "eV/atom"
    assert gap.split_ids() == e_form.split_ids()
    entries = {e["id"]: e for e in load_jarvis_dataset("megnet")}
    record = gap.test_dataset[0]
    assert record.target == entries[record.id]["gap pbe"]


def test_target_stats_are_train_mean_and_population_std(megnet_raw, small_mp_kwargs):
    dm = MPDataModule(**small_mp_kwargs)
    targets = np.array([r.target for r in dm.train_dataset])
    mean, std = dm.target_stats()
    assert mean == pytest.approx(targets.mean(), abs=1e-12)
    assert std == pytest.approx(np.sqrt(((targets - targets.mean()) ** 2).mean()), abs=1e-12)
    assert std != pytest.approx(targets.std(ddof=1), abs=1e-9)


def test_loaders_shuffle_and_drop_last_only_for_training(megnet_raw, small_mp_kwargs):
    dm = MPDataModule(**{**small_mp_kwargs, "batch_size": 8})
    dm.setup()
    n_train = dm.split_sizes()["train"]
    torch.manual_seed(0)
    first = [i for b in dm.train_dataloader() for i in b.ids]
    torch.manual_seed(1)
    second = [i for b in dm.train_dataloader() for i in b.ids]
    assert len(first) == (n_train // 8) * 8 < n_train  # drop_last
    assert first != second  # shuffled
    train_loader = dm.train_dataloader()
    assert train_loader.drop_last and train_loader.batch_size == 8
    val = [i for b in dm.val_dataloader() for i in b.ids]
    assert val == dm.split_ids()["val"]  # all of it, in split order
    test_batches = list(dm.test_dataloader())
    assert all(len(b) == 1 for b in test_batches)  # test_batch_size defaults to 1 (as the papers)
    assert [b.ids[0] for b in test_batches] == dm.split_ids()["test"]
    predict = [i for b in dm.predict_dataloader() for i in b.ids]
    assert predict == dm.split_ids()["test"]
    batch = next(iter(dm.val_dataloader()))
    assert isinstance(batch, CrystalBatch)
    assert batch.pos.shape == (batch.num_atoms, 3) and batch.lattice.shape == (len(batch), 3, 3)
    assert int(batch.sizes.sum()) == batch.num_atoms and batch.y.dtype == torch.float32


def test_small_train_split_does_not_silently_yield_zero_batches(megnet_raw, small_mp_kwargs):
    dm = MPDataModule(**{**small_mp_kwargs, "batch_size": 1000})
    assert len(list(dm.train_dataloader())) == 1


def test_loader_workers_read_the_memory_mapped_cache(megnet_raw, small_mp_kwargs):
    dm = MPDataModule(**{**small_mp_kwargs, "num_workers": 1})
    ids = [i for b in dm.val_dataloader() for i in b.ids]
    assert ids == dm.split_ids()["val"]


def test_default_mp_split_on_a_subset_explains_itself(megnet_raw):
    dm = MPDataModule("e_form")
    with pytest.raises(DataError, match=r"60000.*n_train/n_val/n_test to null"):
        dm.setup()


def test_missing_raw_file_is_a_one_line_error(data_dir):
    with pytest.raises(DataNotFoundError) as info:
        JarvisDataModule("formation_energy").setup()
    assert "jdft_3d-8-18-2021.json.zip" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ValueError, match="formation_energy, total_energy"):
        JarvisDataModule("band_gap")


def test_jarvis_group_filter_and_per_target_groups(dft3d_raw):
    entries = load_jarvis_dataset("dft_3d_2021")
    sizes = {}
    for target, field in [
        ("formation_energy", "formation_energy_peratom"),
        ("total_energy", "optb88vdw_total_energy"),
        ("opt_bandgap", "optb88vdw_bandgap"),
        ("mbj_bandgap", "mbj_bandgap"),
        ("ehull", "ehull"),
    ]:
        dm = JarvisDataModule(target, batch_size=4)
        ids = {i for split in dm.split_ids().values() for i in split}
        sizes[target] = dm._meta["filtered_entries"]
        assert "JVASP-14" not in ids or target in ("mbj_bandgap", "ehull")  # its OPT gap is "na"
        by_id = {e["jid"]: e for e in entries}
        assert all(isinstance(by_id[i][field], float) for i in ids)
        record = dm.val_dataset[0]
        assert record.target == by_id[record.id][field]
    assert sizes["formation_energy"] == sizes["total_energy"] == sizes["opt_bandgap"] == 59  # joint filter
    assert sizes["mbj_bandgap"] == sum(1 for e in entries if e["mbj_bandgap"] != "na")
    assert sizes["ehull"] == sum(1 for e in entries if e["ehull"] != "na")


def test_mbj_raw_fingerprints_use_the_monotone_position_to_raw_map(dft3d_raw):
    entries = load_jarvis_dataset("dft_3d_2021")
    kept = np.array([i for i, e in enumerate(entries) if e["mbj_bandgap"] != "na"])
    expected = paper_split(len(kept))
    dm = JarvisDataModule("mbj_bandgap")
    for name, positions in expected.items():
        assert dm.split_fingerprints()[name] == split_fingerprint(positions)
        assert dm.split_fingerprints(raw=True)[name] == split_fingerprint(kept[positions])
        assert dm.split_ids()[name] == [entries[i]["jid"] for i in kept[positions]]


def test_moduli_come_from_the_pickles_in_their_split(bulk_raw):
    import pickle

    dm = MPDataModule("bulk_modulus")
    assert dm.target_units == "log10(GPa)"
    assert dm.split_sizes() == {"train": 12, "val": 4, "test": 4}
    val_items = pickle.loads(bulk_raw["val"].read_bytes())
    assert dm.split_ids()["val"] == [item["id"] for item in val_items]
    assert dm.split_fingerprints()["val"] == id_fingerprint([item["id"] for item in val_items])
    assert dm.val_dataset[1].target == float(val_items[1]["bulk modulus"])
    assert all(math.isfinite(r.target) for r in dm.train_dataset)


DATAMODULES = ("MPDataModule", "JarvisDataModule", "CustomDataModule", "EwaldDataModule")
CONFIGS_BEFORE = Path(__file__).parent / "configs_before_dedupe"


def init_arguments(cls: type) -> dict[str, inspect.Parameter]:
    """The named parameters of every ``__init__`` from ``cls`` up to :class:`CrystalDataModule` (no ``**kwargs``)."""
    chain = cls.__mro__[: cls.__mro__.index(CrystalDataModule) + 1]
    return {
        name: p
        for klass in reversed(chain)
        for name, p in list(inspect.signature(klass.__init__).parameters.items())[1:]
        if p.kind is not inspect.Parameter.VAR_KEYWORD
    }


def data_help(capsys, name: str) -> dict[str, str]:
    """``--data.<argument>`` -> its help, as ``python -m framer.cli fit --data.help framer.data.<name>`` prints it."""
    from framer.cli import FramerCLI

    with pytest.raises(SystemExit) as exit_info:
        FramerCLI(args=["fit", "--data.help", f"framer.data.{name}"])
    assert exit_info.value.code in (0, None)
    text = capsys.readouterr().out.split("Help for --data.help=")[1]  # jsonargparse names the shortest import path
    blocks = re.findall(r"^  --data\.(\w+)(.*?)(?=^  --|\Z)", text, flags=re.MULTILINE | re.DOTALL)
    return {option: " ".join(rest.split()) for option, rest in blocks}


def test_every_datamodule_argument_is_typed_and_documented_once_for_the_command_line(capsys, monkeypatch):
    """``--data.help`` lists every argument a DataModule takes, with its type and help; the shared ones carry the
    text of :class:`CrystalDataModule`'s docstring, the one place they are documented."""
    monkeypatch.setattr(sys, "argv", ["framer"])  # LightningCLI warns when pytest's arguments are there too
    shared = {name: None for name in init_arguments(CrystalDataModule)}
    assert {"target", "batch_size", "test_batch_size", "num_workers", "data_dir", "build_workers"} <= set(shared)
    for name in DATAMODULES:
        cls = getattr(framer.data, name)
        arguments = init_arguments(cls)
        for argument, parameter in arguments.items():
            assert parameter.annotation is not inspect.Parameter.empty, f"{name}.{argument}"
        helps = data_help(capsys, name)
        assert set(helps) == set(arguments), name
        for argument, text in helps.items():
            described = text.split("(type:")[0]  # the metavar ({choices} or NAME), then the help
            assert len(re.sub(r"^(\{[^}]*\}|[A-Z_]+)", "", described).strip()) > 10, f"{name} --data.{argument}"
            assert "(type: Any" not in text, f"{name} --data.{argument}"
            if argument in shared and argument != "target":
                shared[argument] = shared[argument] or described
                assert described == shared[argument], f"{name} documents {argument} differently"
    assert "kept alive across epochs" in shared["num_workers"]  # the words of CrystalDataModule's docstring


@pytest.mark.parametrize("name", ["mp", "jarvis", "custom", "ewald"])
def test_run_configs_written_before_the_arguments_were_shared_still_load(name, tmp_path, monkeypatch, capsys):
    """Fixtures written by framer at cfe6299 (``mp.yaml`` a whole run's config.yaml, the others its data block):
    ``--print_config`` reads back the same data settings, and a DataModule built from them records each value."""
    from framer.cli import FramerCLI

    monkeypatch.setattr(sys, "argv", ["framer"])
    fixture = CONFIGS_BEFORE / f"{name}.yaml"
    written = yaml.safe_load(fixture.read_text())["data"]
    configs = [fixture] if name == "mp" else [REPO / "conf" / "default.yaml", fixture]
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        FramerCLI(args=["fit", *(arg for path in configs for arg in ("--config", str(path))), "--print_config"])
    assert yaml.safe_load(capsys.readouterr().out)["data"] == written
    (tmp_path / "custom_crystals").mkdir()
    cls = getattr(framer.data, written["class_path"].rpartition(".")[2])
    assert dict(cls(**written["init_args"]).hparams) == written["init_args"]


def test_extra_positional_arguments_are_refused_rather_than_taken_for_another_setting():
    with pytest.raises(TypeError, match="positional"):
        MPDataModule("gap", 64)  # batch_size is keyword-only: 64 is not taken for n_train


def test_paper_split_verification_checks_positions_and_raw_indices(dft3d_raw, monkeypatch, caplog):
    import dataclasses
    import logging

    import framer.data.build as build

    entries = load_jarvis_dataset("dft_3d_2021")
    kept = np.array([i for i, e in enumerate(entries) if e["mbj_bandgap"] != "na"])
    splits = paper_split(len(kept))
    published = PaperSplit(
        len(kept),
        tuple(len(splits[k]) for k in ("train", "val", "test")),
        (None, None, None),
        {k: split_fingerprint(v) for k, v in splits.items()},
        {k: split_fingerprint(kept[v]) for k, v in splits.items()},
    )
    patched = {**build.PAPER_SPLITS, "dft_3d_2021-mbj_bandgap": published}
    monkeypatch.setattr(build, "PAPER_SPLITS", patched)
    assert JarvisDataModule("mbj_bandgap").summary()["matches_paper_split"] is True
    # Same N and positions, but a different entry filtered out: only the raw-index fingerprints notice.
    patched["dft_3d_2021-mbj_bandgap"] = dataclasses.replace(
        published, raw_fingerprints={k: split_fingerprint(kept[v] + 1) for k, v in splits.items()}
    )
    caplog.set_level(logging.WARNING, logger="framer.data")
    dm = JarvisDataModule("mbj_bandgap", rebuild_cache=True)
    assert dm.summary()["matches_paper_split"] is False
    assert "other entries were filtered out" in caplog.text
