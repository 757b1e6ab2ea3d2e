"""Sweep-file schema, override helpers and storage URLs (no training)."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml

from framer.errors import EXIT_USER_ERROR
from framer.launch import resolved_config
from framer.tune.storage import storage_spec, storage_url
from framer.tune.sweep import Sweep, SweepError, nested

REPO = Path(__file__).resolve().parents[2]

SWEEPS = sorted((REPO / "sweeps").glob("*.yaml"))


def test_shipped_sweeps_parse():
    names = {p.stem for p in SWEEPS}
    assert {"frames", "lr", "smoke"} <= names
    for path in SWEEPS:
        sweep = Sweep.load(path)
        assert sweep.name == path.stem
        assert all(p.exists() for p in map(__import__("pathlib").Path, sweep.configs)), sweep.configs
        assert sweep.params and sweep.n_trials >= 1
        sweep.make_sampler(), sweep.make_pruner()


def test_frames_sweep_is_frame_by_angle_basis_grid():
    sweep = Sweep.load(REPO / "sweeps" / "frames.yaml")
    grid = sweep.grid()
    assert set(grid["frame"]) == {"max", "static", "weighted_pca", "pca", "lattice"}
    assert grid["angle_basis"] == [16, 32, 64]
    assert sweep.grid_size() == sweep.n_trials == 15
    assert isinstance(sweep.make_sampler(), optuna.samplers.GridSampler)
    by_path = sweep.values_by_path({"frame": "pca", "angle_basis": 32})
    assert by_path == {
        "model.init_args.model.init_args.frame": "pca",
        "model.init_args.model.init_args.angle_basis": 32,
    }


def test_distributions_and_errors():
    sweep = Sweep.from_dict(
        {
            "configs": ["conf/default.yaml"],
            "search_space": {
                "a.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
                "a.n": {"type": "int", "low": 1, "high": 9, "step": 2},
                "a.c": ["x", "y"],
            },
        }
    )
    dists = {p.name: p.distribution for p in sweep.params}
    assert dists["a.lr"].log and dists["a.n"].step == 2 and dists["a.c"].choices == ("x", "y")
    for bad in (
        {"configs": [], "search_space": {"x": [1]}},
        {"configs": ["c"], "search_space": {}},
        {"configs": ["c"], "search_space": {"x": {"type": "float", "low": 1}}},
        {"configs": ["c"], "search_space": {"x": {"type": "bogus"}}},
        {"configs": ["c"], "search_space": {"x": [1]}, "direction": "up"},
        {"configs": ["c"], "search_space": {"x": [1]}, "sampler": {"type": "tpe", "nonsense": 1}},
        {"configs": ["c"], "search_space": {"x": [1]}, "typo": 1},
    ):
        with pytest.raises(SweepError):
            Sweep.from_dict(bad)


def test_nested_overrides():
    assert nested({"a.b.c": 1, "a.d": 2}) == {"a": {"b": {"c": 1}, "d": 2}}
    with pytest.raises(SweepError):
        nested({"a": 1, "a.b": 2})


def test_storage_urls(tmp_path):
    assert storage_url("postgresql://u:p@127.0.0.1/db") == "postgresql+psycopg2://u:p@127.0.0.1/db"
    assert storage_url("postgres://h/db") == "postgresql+psycopg2://h/db"
    assert storage_url("postgresql+psycopg2://h/db") == "postgresql+psycopg2://h/db"
    assert storage_spec(None, tmp_path) == f"journal:{tmp_path.resolve() / 'journal.log'}"
    assert storage_spec(str(tmp_path / "x.log"), tmp_path) == f"journal:{tmp_path / 'x.log'}"
    assert storage_spec("sqlite:///rel.db", tmp_path).startswith("sqlite:////")


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_shipped_sweeps_resolve_with_the_cli(path):
    """Every searched and fixed config path is a real CLI option (checked by jsonargparse, nothing is built)."""
    sweep = Sweep.load(path)
    values = {}
    for p in sweep.params:
        d = p.distribution
        values[p.path] = d.choices[-1] if hasattr(d, "choices") else d.high
    config = yaml.safe_load(resolved_config(sweep.configs, sweep.overrides(values)))
    for dotted, value in sweep.overrides(values).items():
        node = config
        for part in dotted.split("."):
            node = node[part]
        assert node == value, dotted


BASE_SWEEP = {"configs": ["conf/default.yaml"], "search_space": {"a.c": ["x", "y"]}}


@pytest.mark.parametrize("name", ["../../escaped", "/tmp/escaped", "a/b", "a\\b", "..", ".", "x\x00y", "-x", "a" * 129])
def test_study_names_that_are_not_plain_names_are_refused(name):
    with pytest.raises(SweepError, match=r"study name .* is not a plain name") as err:
        Sweep.from_dict({**BASE_SWEEP, "study": name})
    assert len(str(err.value).splitlines()) == 1


@pytest.mark.parametrize("name", ["lr", "frames v2", "lr-1e-3", "テスト", "_x", "a.b+c=d@e"])
def test_plain_study_names_are_accepted(name):
    assert Sweep.from_dict({**BASE_SWEEP, "study": name}).name == name


def test_the_tune_command_refuses_an_escaping_study_name_without_creating_anything(tmp_path, monkeypatch, capsys):
    from framer.tune.__main__ import main

    work = tmp_path / "project" / "work"
    work.mkdir(parents=True)
    sweep_file = work / "evil.yaml"
    sweep_file.write_text(yaml.safe_dump({**BASE_SWEEP, "configs": [str(REPO / "conf" / "default.yaml")]}))
    sweep_file.write_text(sweep_file.read_text() + "study: ../../escaped\nn_trials: 1\n")
    monkeypatch.chdir(work)
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(SystemExit) as exit_info:
        main(["--sweep", str(sweep_file), "--no-mlflow", "--no-figures"])
    message = capsys.readouterr().err.strip()
    assert exit_info.value.code == EXIT_USER_ERROR and "\n" not in message
    assert message.startswith("framer.tune: error:") and "study name" in message
    assert sorted(tmp_path.rglob("*")) == before  # no study directory, journal or trial anywhere


def test_figures_only_without_a_study_is_one_error_line_and_creates_nothing(tmp_path, capsys):
    from framer.tune.__main__ import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--sweep", str(REPO / "sweeps" / "smoke.yaml"), "--study-dir", str(tmp_path / "none"), "--figures-only"])
    message = capsys.readouterr().err.strip()
    assert exit_info.value.code == EXIT_USER_ERROR and "\n" not in message
    assert message.startswith("framer.tune: error: no study in")
    assert not (tmp_path / "none").exists()
