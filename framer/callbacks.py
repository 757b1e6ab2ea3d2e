"""Callbacks used by the CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter

from framer.tracking import write_predictions_csv


class PredictionWriter(BasePredictionWriter):
    """Writes ``predict`` outputs (``{"ids", "prediction"}`` per batch) to a CSV of id and prediction.

    Under several processes each rank writes ``<stem>.rank<k>.csv`` (its share of the data).

    Args:
        path: The CSV file to write.
    """

    def __init__(self, path: str | Path) -> None:
        super().__init__(write_interval="epoch")
        self.path = Path(path)
        self.written: Path | None = None

    def write_on_epoch_end(
        self, trainer: Trainer, pl_module: LightningModule, predictions: Any, batch_indices: Any
    ) -> None:
        batches = predictions
        if batches and isinstance(batches[0], list):  # several predict dataloaders
            batches = [b for loader in batches for b in loader]
        rows = []
        for out in batches:
            values = out["prediction"]
            values = values.tolist() if isinstance(values, torch.Tensor) else list(values)
            rows.extend(zip(out["ids"], values))
        path = self.path
        if trainer.world_size > 1:
            path = path.with_name(f"{path.stem}.rank{trainer.global_rank}{path.suffix}")
        self.written = write_predictions_csv(path, rows, ("id", "prediction"))
        print(f"framer: wrote {len(rows)} predictions to {path}")
