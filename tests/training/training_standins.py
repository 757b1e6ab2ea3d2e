"""Tiny stand-ins for the tests of training: a small network and a datamodule of random crystals.

They exist so the training code can be tested on its own; the integration tests use the real models and
datamodules.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
from torch.utils.data import DataLoader

from framer.data import collate_records
from framer.data.structures import make_record
from framer.testing import PooledMLP


class TinyModel(PooledMLP):
    """:class:`framer.testing.PooledMLP` without dropout.

    Args:
        hidden: Width of the embedding and the MLP.
    """

    def __init__(self, hidden: int = 16) -> None:
        super().__init__(hidden, dropout=0.0)


def random_records(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        atoms = int(rng.integers(1, 5))
        a = float(rng.uniform(3.0, 5.0))
        lattice = np.diag([a, a * rng.uniform(0.9, 1.1), a * rng.uniform(0.9, 1.1)])
        frac = rng.uniform(0, 1, size=(atoms, 3))
        frac[0] = 0.0
        numbers = rng.integers(1, 30, size=atoms)
        try:
            record = make_record(f"c{seed}-{i}", lattice, frac, numbers, check_overlap=True)
        except Exception:
            record = make_record(f"c{seed}-{i}", lattice, frac[:1], numbers[:1])
        target = float(record.atomic_numbers.mean() / 10.0 + abs(np.linalg.det(lattice)) / record.num_atoms / 50.0)
        records.append(record.with_target(target))
    return records


class TinyDataModule(pl.LightningDataModule):
    """Random crystals whose target is a smooth function of composition and volume.

    Args:
        num_crystals: Crystals in total (split 60/20/20).
        batch_size: Training batch size.
        test_batch_size: Batch size of the test loader.
        seed: Seed of the generator.
    """

    dataset_name = "tiny"
    target = "toy"
    target_units = "eV"

    def __init__(self, num_crystals: int = 40, batch_size: int = 8, test_batch_size: int = 1, seed: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()
        records = random_records(num_crystals, seed)
        n_train, n_val = int(0.6 * num_crystals), int(0.2 * num_crystals)
        self.splits = {
            "train": records[:n_train],
            "val": records[n_train : n_train + n_val],
            "test": records[n_train + n_val :],
        }
        self.batch_size = batch_size
        self.test_batch_size = test_batch_size

    def target_stats(self) -> tuple[float, float]:
        y = np.array([r.target for r in self.splits["train"]])
        return float(y.mean()), float(y.std())

    def split_fingerprints(self) -> dict:
        return {
            k: {"n": len(v), "sha256": hashlib.sha256(",".join(r.id for r in v).encode()).hexdigest()}
            for k, v in self.splits.items()
        }

    def train_dataloader(self):
        return DataLoader(
            self.splits["train"], self.batch_size, shuffle=True, drop_last=True, collate_fn=collate_records
        )

    def val_dataloader(self):
        return DataLoader(self.splits["val"], batch_size=self.batch_size, collate_fn=collate_records)

    def test_dataloader(self):
        return DataLoader(self.splits["test"], batch_size=self.test_batch_size, collate_fn=collate_records)

    def predict_dataloader(self):
        return self.test_dataloader()


HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent


def quiet_trainer_kwargs(**overrides):
    kwargs = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        gradient_clip_val=1.0,
        enable_checkpointing=False,
    )
    kwargs.update(overrides)
    return kwargs


def subprocess_env(tmp_path: Path) -> dict[str, str]:
    """Environment for ``python -m framer.cli`` subprocesses: stand-ins importable, private MLflow, one thread."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    env.setdefault("OMP_NUM_THREADS", "1")
    env["FRAMER_ALLOWED_MODULES"] = "training_standins,reliability_standins"
    env.pop("FRAMER_DEBUG", None)
    return env
