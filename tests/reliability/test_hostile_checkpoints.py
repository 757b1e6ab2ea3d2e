"""Hostile checkpoints and configs: files made only of plain data (they pass ``weights_only=True``) that name a class
to build, and pickles that would run code when unpickled. Every way framer turns a file into objects refuses them with
one ``framer: error:`` line naming the file and the class path (exit code 2), or in Python with an exception, before
anything is imported, in any spelling of the path; the payloads never run (their marker file stays absent).

Payloads: ``subprocess.run(["touch", MARK])`` as the network, optimizer or scheduler, Lightning's ``_class_path`` and
``_instantiator`` entries, and a module whose *import* creates the marker (refused only if nothing is imported).
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import fsspec
import pytest
import torch
from reliability_helpers import STANDIN_MODULES, cli_env, fit_args
from test_untrusted_files import RunsCode, one_error

from framer.cli import main
from framer.errors import EXIT_USER_ERROR
from framer.instantiate import RefusedClassPath
from framer.module import CrystalRegressor

POSCAR = "NaCl\n1.0\n4 0 0\n0 4 0\n0 0 4\nNa Cl\n1 1\nDirect\n0 0 0\n0.5 0.5 0.5\n"


@pytest.fixture(scope="module")
def real_checkpoint(tmp_path_factory, ewald_root) -> Path:
    """A real ``last.ckpt`` of a one-epoch run of the stand-in network (built once)."""
    cwd = tmp_path_factory.mktemp("real-run")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(cwd)
        patch.setenv("FRAMER_DATA_DIR", str(ewald_root))
        patch.setenv("FRAMER_ALLOWED_MODULES", STANDIN_MODULES)
        main(fit_args("real", "--tracking.mlflow=false", "--test_after_fit=false", epochs=1))
    return cwd / "runs" / "real" / "version_0" / "checkpoints" / "last.ckpt"


@pytest.fixture
def importing_module(tmp_path, monkeypatch) -> tuple[str, Path]:
    """An importable module ``payload_<random>`` (on sys.path) whose import creates a marker file; (name, marker)."""
    name = f"payload_{uuid.uuid4().hex[:10]}"
    marker = tmp_path / "imported"
    folder = tmp_path / "site"
    folder.mkdir()
    (folder / f"{name}.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).touch()\nimport torch\nclass Net(torch.nn.Linear):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(folder))
    return name, marker


def edited(real: Path, target: Path, **hparams) -> Path:
    """``real`` with some ``hyper_parameters`` entries replaced (None removes one): still plain data."""
    checkpoint = torch.load(real, map_location="cpu", weights_only=True)
    for key, value in hparams.items():
        if value is None:
            checkpoint["hyper_parameters"].pop(key, None)
        else:
            checkpoint["hyper_parameters"][key] = value
    torch.save(checkpoint, target)
    torch.load(target, weights_only=True)  # it really is plain data
    return target


def touch(marker: Path) -> dict:
    return {"class_path": "subprocess.run", "init_args": {"args": ["touch", str(marker)]}}


PAYLOADS = {
    "network without instantiator": lambda m: {"model": touch(m), "_instantiator": None},
    "network": lambda m: {"model": touch(m)},
    "optimizer": lambda m: {"optimizer": touch(m)},
    "scheduler as a string": lambda m: {"lr_scheduler": "subprocess.Popen"},
    "_class_path": lambda m: {"_class_path": "subprocess.run"},
    "_instantiator": lambda m: {"_instantiator": "os.system"},
}


@pytest.mark.parametrize("payload", list(PAYLOADS))
def test_load_from_checkpoint_refuses_a_class_path_payload(real_checkpoint, tmp_path, payload):
    marker = tmp_path / "pwned"
    path = edited(real_checkpoint, tmp_path / "evil.ckpt", **PAYLOADS[payload](marker))
    with pytest.raises(RefusedClassPath, match=rf"checkpoint {path}: .*refused"):
        CrystalRegressor.load_from_checkpoint(path)
    assert not marker.exists()
    CrystalRegressor.load_from_checkpoint(real_checkpoint)  # the unedited file loads


def test_a_network_passed_by_the_caller_replaces_the_checkpoints_without_importing_it(real_checkpoint, tmp_path):
    marker = tmp_path / "pwned"
    path = edited(real_checkpoint, tmp_path / "evil.ckpt", model=touch(marker))
    network = CrystalRegressor.load_from_checkpoint(real_checkpoint).model
    module = CrystalRegressor.load_from_checkpoint(path, model=network)
    assert module.model is network and not marker.exists()


def test_a_class_whose_module_runs_code_on_import_is_refused_before_the_import(
    real_checkpoint, tmp_path, importing_module
):
    name, marker = importing_module
    network = {"class_path": f"{name}.Net", "init_args": {"in_features": 2, "out_features": 1}}
    path = edited(real_checkpoint, tmp_path / "evil.ckpt", model=network)
    with pytest.raises(RefusedClassPath, match=rf"{name}\.Net"):
        CrystalRegressor.load_from_checkpoint(path)
    with pytest.raises(RefusedClassPath, match=rf"{name}\.Net"):
        CrystalRegressor(network)  # a config dict in Python: the same check
    assert not marker.exists() and name not in sys.modules


def test_wrong_kind_of_class_is_refused(real_checkpoint, tmp_path):
    path = edited(real_checkpoint, tmp_path / "odd.ckpt", optimizer={"class_path": "torch.nn.Linear"})
    with pytest.raises(RefusedClassPath, match=r"'torch.nn.Linear' is not a subclass of torch.optim.optimizer"):
        CrystalRegressor.load_from_checkpoint(path)


@pytest.mark.parametrize("subcommand", ["fit", "validate", "test", "predict"])
def test_every_cli_subcommand_refuses_a_hostile_checkpoint(
    workdir, real_checkpoint, capsys, importing_module, subcommand
):
    name, marker = importing_module
    path = edited(real_checkpoint, workdir / "evil.ckpt", model={"class_path": f"{name}.Net"})
    args = fit_args("evil", "--tracking.mlflow=false", epochs=1)
    args[0] = subcommand
    line = one_error([*args, f"--ckpt_path={path}"], capsys)
    assert f"checkpoint {path}" in line and f"{name}.Net" in line and "refused" in line, line
    assert not marker.exists() and name not in sys.modules
    assert not (workdir / "runs").exists()  # nothing was written


def subprocess_run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    full_env = {**cli_env(cwd), **env}
    return subprocess.run(args, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=300)


def assert_one_error_line(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == EXIT_USER_ERROR, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("framer: error:")]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    return lines[0]


def test_framer_predict_refuses_an_edited_real_checkpoint(real_checkpoint, tmp_path):
    marker = tmp_path / "pwned"
    path = edited(real_checkpoint, tmp_path / "evil.ckpt", **PAYLOADS["network without instantiator"](marker))
    (tmp_path / "POSCAR").write_text(POSCAR)
    cmd = [sys.executable, "-m", "framer.predict", "--ckpt", str(path), "--inputs", "POSCAR", "--out", "p.csv"]
    line = assert_one_error_line(subprocess_run(cmd, tmp_path))
    assert str(path) in line and "'subprocess.run'" in line
    assert not marker.exists() and not (tmp_path / "p.csv").exists()


@pytest.fixture
def pickle_payload(tmp_path) -> tuple[Path, Path]:
    """A checkpoint whose unpickling runs ``touch MARK`` (refused by ``weights_only=True``); (path, marker)."""
    marker = tmp_path / "pwned"
    path = tmp_path / "pickled.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": RunsCode(f"touch {marker}")}, path)
    return path, marker


def test_framer_predict_reads_with_weights_only_even_when_torch_is_told_not_to(pickle_payload, tmp_path):
    path, marker = pickle_payload
    (tmp_path / "POSCAR").write_text(POSCAR)
    cmd = [sys.executable, "-m", "framer.predict", "--ckpt", str(path), "--inputs", "POSCAR"]
    line = assert_one_error_line(subprocess_run(cmd, tmp_path, TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1"))
    assert "could run code" in line and "posix.system" in line
    assert not marker.exists()


def spell(path: Path, spelling: str) -> str:
    if spelling == "path":
        return str(path)
    if spelling == "file://":
        return path.as_uri()
    url = f"memory://{uuid.uuid4().hex}/{path.name}"  # an fsspec file system without a network
    with fsspec.open(url, "wb") as handle:
        handle.write(path.read_bytes())
    return url


@pytest.mark.parametrize("spelling", ["path", "file://", "memory://"])
def test_a_pickle_payload_is_refused_in_every_spelling(workdir, capsys, monkeypatch, pickle_payload, spelling):
    path, marker = pickle_payload
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # framer passes weights_only=True explicitly
    url = spell(path, spelling)
    args = fit_args("evil", "--tracking.mlflow=false", epochs=1)
    line = one_error(["validate", *args[1:], f"--ckpt_path={url}"], capsys)
    assert f"checkpoint {url} was not loaded" in line and "could run code" in line
    assert not marker.exists()


@pytest.mark.parametrize("spelling", ["path", "file://", "memory://"])
def test_a_class_path_payload_is_refused_in_every_spelling(workdir, real_checkpoint, capsys, spelling):
    marker = workdir / "pwned"
    url = spell(edited(real_checkpoint, workdir / "evil.ckpt", model=touch(marker)), spelling)
    with pytest.raises(RefusedClassPath, match=r"'subprocess\.run'"):
        CrystalRegressor.load_from_checkpoint(url)
    args = fit_args("evil", "--tracking.mlflow=false", epochs=1)
    line = one_error(["test", *args[1:], f"--ckpt_path={url}"], capsys)
    assert f"checkpoint {url}" in line and "'subprocess.run'" in line
    assert not marker.exists()


@pytest.mark.parametrize("spelling", ["path", "file://", "memory://"])
def test_a_good_checkpoint_loads_from_every_spelling(real_checkpoint, spelling):
    module = CrystalRegressor.load_from_checkpoint(spell(real_checkpoint, spelling))
    expected = torch.load(real_checkpoint, weights_only=True)["state_dict"]
    assert all(torch.equal(module.state_dict()[k], v) for k, v in expected.items())


def test_a_config_file_naming_an_outside_class_is_refused_naming_the_file(workdir, capsys, importing_module):
    name, marker = importing_module
    config = workdir / "shared.yaml"
    config.write_text(f"model:\n  init_args:\n    model:\n      class_path: {name}.Net\n")
    args = fit_args("evil", "--tracking.mlflow=false", epochs=1)
    line = one_error([*args, "--config", str(config)], capsys)
    assert f"config {config}" in line and f"{name}.Net" in line and "refused" in line
    assert not marker.exists() and name not in sys.modules


def test_a_command_line_class_path_outside_the_allowed_packages_is_refused(workdir, capsys, importing_module):
    name, marker = importing_module
    args = fit_args("evil", "--tracking.mlflow=false", epochs=1)
    callback = "--trainer.callbacks+=" + json.dumps({"class_path": f"{name}.Net"})
    line = one_error([*args, callback], capsys)
    assert f"{name}.Net" in line
    line = one_error([*args, f"--model.init_args.model={name}.Net"], capsys)
    assert f"'{name}.Net' was refused and not imported" in line
    assert not marker.exists() and name not in sys.modules


def test_the_allow_list_is_extended_by_the_environment(workdir, capsys, monkeypatch):
    """The stand-in network is outside framer/torch/lightning: refused, until FRAMER_ALLOWED_MODULES names it."""
    monkeypatch.setenv("FRAMER_ALLOWED_MODULES", "")
    args = fit_args("allow", "--tracking.mlflow=false", "--trainer.fast_dev_run=true", epochs=1)
    config = workdir / "standin.yaml"
    config.write_text("model:\n  init_args:\n    model:\n      class_path: reliability_standins.PooledMLP\n")
    line = one_error([*args, "--config", str(config)], capsys)
    assert "'reliability_standins.PooledMLP' was refused" in line and "FRAMER_ALLOWED_MODULES" in line
    monkeypatch.setenv("FRAMER_ALLOWED_MODULES", "otherpkg, reliability_standins")
    main([*args, "--config", str(config)])  # runs
