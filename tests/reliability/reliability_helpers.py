"""Helpers of the reliability tests: the small embedded data set's arguments, CLI arguments, subprocess environments.

(A module with its own name: ``from conftest import ...`` would pick whichever conftest.py was imported first.)
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CONF = REPO / "conf"
if str(HERE) not in sys.path:  # the stand-ins are imported by class path, also from subprocesses
    sys.path.insert(0, str(HERE))

#: the embedded Ewald data at test size: 32 crystals -> 25 train (6 batches of 4), 3 val, 4 test
DATA_ARGS = [
    "--data.init_args.num_crystals=32",
    "--data.init_args.max_atoms=6",
    "--data.init_args.batch_size=4",
    "--data.init_args.test_batch_size=8",
    "--data.init_args.build_workers=0",
]
STEPS_PER_EPOCH = 6
#: the packages of the stand-ins, which configs name by class path (allowed through $FRAMER_ALLOWED_MODULES)
STANDIN_MODULES = "reliability_standins,training_standins"
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", "--trainer.log_every_n_steps=1"]
STANDIN = ["--model.init_args.model=reliability_standins.PooledMLP", "--model.init_args.model.init_args.hidden=16"]


def fit_args(run_name: str, *extra: str, model: list[str] = STANDIN, epochs: int = 3) -> list[str]:
    """``fit`` on the small Ewald data set, on CPU, without progress bars; ``extra`` is appended last."""
    return [
        "fit",
        "--config",
        str(CONF / "default.yaml"),
        "--config",
        str(CONF / "data" / "ewald.yaml"),
        "--config",
        str(CONF / "trainer" / "cpu.yaml"),
        *model,
        *DATA_ARGS,
        *QUIET,
        f"--trainer.max_epochs={epochs}",
        "--model.init_args.swa_epochs=1",
        f"--tracking.run_name={run_name}",
        *extra,
    ]


def callback_arg(class_path: str, **init_args) -> str:
    import json

    return "--trainer.callbacks+=" + json.dumps({"class_path": class_path, "init_args": init_args})


def copy_data(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, dirs_exist_ok=True)
    return dst


def cli_env(tmp_path: Path, data_root: Path | None = None) -> dict[str, str]:
    """Environment for ``python -m framer.cli`` subprocesses: this checkout and the stand-ins first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    env["FRAMER_ALLOWED_MODULES"] = STANDIN_MODULES
    if data_root is not None:
        env["FRAMER_DATA_DIR"] = str(data_root)
    env.pop("FRAMER_DEBUG", None)
    return env


def load_checkpoint(path: Path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)
