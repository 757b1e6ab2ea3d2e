"""framer.data.resumable through real Lightning: a run resumed from the checkpoint of any step sees the batches, in
the order, that the uninterrupted run sees (the end-to-end version with the CLI, SIGKILL and SIGTERM is
tests/reliability/test_preemption.py)."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from framer.data.resumable import EpochShuffleSampler, ResumableDataLoader

SAMPLES, BATCH, EPOCHS = 10, 3, 3  # three full batches per epoch (the last sample is dropped), nine steps


class Recorder(LightningModule):
    """Trains one number and records each training batch with its epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.seen: list[tuple[int, list[int]]] = []

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        self.seen.append((self.current_epoch, batch.tolist()))
        return (self.weight - batch.float().mean()) ** 2

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def resumable_loader(workers: int = 0) -> DataLoader:
    """As :class:`~framer.data.datamodules.CrystalDataModule` builds it (workers persist across epochs)."""
    return ResumableDataLoader(
        list(range(SAMPLES)),
        batch_size=BATCH,
        drop_last=True,
        sampler=EpochShuffleSampler(SAMPLES, seed=7),
        num_workers=workers,
        persistent_workers=workers > 0,
    )


def fit(root, loader: DataLoader, ckpt_path=None, every_step: ModelCheckpoint | None = None):
    trainer = Trainer(
        default_root_dir=root,
        max_epochs=EPOCHS,
        accelerator="cpu",
        devices=1,
        logger=False,
        callbacks=[every_step] if every_step else [],
        enable_checkpointing=every_step is not None,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    model = Recorder()
    trainer.fit(model, train_dataloaders=loader, ckpt_path=ckpt_path)
    return model.seen


def uninterrupted(root, workers: int = 0):
    """The batches of a 3-epoch run, and the folder of its checkpoints after every step (``step=<n>.ckpt``)."""
    every_step = ModelCheckpoint(root / "ckpt", filename="{step}", every_n_train_steps=1, save_top_k=-1)
    return fit(root, resumable_loader(workers), every_step=every_step), root / "ckpt"


def test_every_epoch_has_its_own_order_fixed_by_seed_and_epoch(tmp_path):
    seen, _ = uninterrupted(tmp_path)
    assert len(seen) == EPOCHS * (SAMPLES // BATCH)
    orders = [[i for epoch, batch in seen if epoch == e for i in batch] for e in range(EPOCHS)]
    assert len({tuple(order) for order in orders}) == EPOCHS  # reshuffled every epoch
    for epoch, order in enumerate(orders):
        assert order == EpochShuffleSampler(SAMPLES, seed=7).permutation(epoch)[: len(order)].tolist()


@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")
@pytest.mark.parametrize("workers", [0, 2])
def test_resuming_after_any_step_of_three_epochs_gives_the_uninterrupted_order(tmp_path, workers):
    """With workers, batches are fetched ahead; the position saved is that of the batches trained on."""
    seen, checkpoints = uninterrupted(tmp_path / "uninterrupted", workers)
    for step in range(1, len(seen) + 1):  # mid-epoch and after the last batch of each epoch
        resumed = fit(tmp_path, resumable_loader(workers), ckpt_path=checkpoints / f"step={step}.ckpt")
        assert seen[:step] + resumed == seen, f"resumed after step {step}"
