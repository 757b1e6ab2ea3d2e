"""Callbacks of the CLI: prediction CSVs, and the safety net every ``fit`` runs with (:func:`safety_callbacks`).

Checkpoint files themselves are written atomically and read with ``weights_only=True`` by
:class:`framer.checkpoints.AtomicCheckpointIO`. Under ``fast_dev_run`` nothing writes checkpoints, as in Lightning.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter, Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from framer.errors import NonFiniteError
from framer.io import write_csv_rows


class PredictionWriter(BasePredictionWriter):
    """Writes ``predict`` outputs (``{"ids", "prediction"}`` per batch) to the CSV ``path`` (id, prediction); under
    several processes each rank writes its share to ``<stem>.rank<k>.csv``."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(write_interval="epoch")
        self.path = Path(path)

    def write_on_epoch_end(
        self, trainer: Trainer, pl_module: LightningModule, predictions: Any, batch_indices: Any
    ) -> None:
        batches = predictions
        if batches and isinstance(batches[0], list):  # several predict dataloaders
            batches = [b for loader in batches for b in loader]
        rows = [row for out in batches for row in zip(out["ids"], out["prediction"].tolist())]
        path = self.path
        if trainer.world_size > 1:
            path = path.with_name(f"{path.stem}.rank{trainer.global_rank}{path.suffix}")
        write_csv_rows(path, ("id", "prediction"), rows)
        print(f"framer: wrote {len(rows)} predictions to {path}")


# --------------------------------------------------------------------------------------------------------------------
# NaN / inf guard
class NonFiniteLossError(NonFiniteError):
    """A NaN or infinite loss, gradient or weight: training stopped before it could reach the weights."""


def last_checkpoint_path(trainer: Trainer) -> Path | None:
    """Where ``last.ckpt`` of this run goes (``<checkpoint dir>/last.ckpt``); None without a ModelCheckpoint."""
    callback = trainer.checkpoint_callback
    dirpath = getattr(callback, "dirpath", None) if callback is not None else None
    if not dirpath:
        return None
    return Path(dirpath) / f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}"


def _describe_last_checkpoint(trainer: Trainer) -> str:
    callback = trainer.checkpoint_callback
    last = getattr(callback, "last_model_path", "") if callback is not None else ""
    if last and Path(last).is_file():
        return f"the last good checkpoint is {Path(last).absolute()} (resume from it with --ckpt_path last)"
    return "no checkpoint had been written yet"


class FiniteGuard(Callback):
    """Stop training at the first non-finite loss or gradient, before the optimizer step, and never save NaN weights.

    - The loss is checked in ``on_before_backward``; gradients in ``on_before_optimizer_step`` (after backward,
      before clipping and the step). Either raises :class:`NonFiniteLossError` with the global step (the number of
      optimizer steps taken so far, as in checkpoint names), the epoch, the batch index and the first crystal ids.
    - ``on_save_checkpoint`` refuses to write a checkpoint whose weights are not finite.
    - With fp16 loss scaling (``precision: 16-mixed``) the GradScaler skips overflowing steps by design, so loss and
      gradients are not checked there; the checkpoint check still applies.
    """

    def __init__(self) -> None:
        super().__init__()
        self._batch: str = ""

    @staticmethod
    def _scaled(trainer: Trainer) -> bool:
        return getattr(trainer.precision_plugin, "scaler", None) is not None

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        ids = list(getattr(batch, "ids", []) or [])
        shown = ", ".join(str(i) for i in ids[:4]) + (f", ... ({len(ids)} crystals)" if len(ids) > 4 else "")
        self._batch = f"epoch {trainer.current_epoch}, batch {batch_idx}" + (f": {shown}" if shown else "")

    def _stop(self, trainer: Trainer, what: str) -> None:
        raise NonFiniteLossError(
            f"{what} at global step {trainer.global_step} ({self._batch}); training stopped before the optimizer "
            f"step, so no weight was changed; {_describe_last_checkpoint(trainer)}. Lower the learning rate, "
            "check the data of this batch or the model's numerics before resuming"
        )

    def on_before_backward(self, trainer: Trainer, pl_module: LightningModule, loss: torch.Tensor) -> None:
        if not self._scaled(trainer) and not bool(torch.isfinite(loss.detach()).all()):
            self._stop(trainer, f"training loss is {loss.detach().float().cpu().flatten()[0].item()}")

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        if self._scaled(trainer):
            return
        grads = {n: p.grad for n, p in pl_module.named_parameters() if p.grad is not None}
        if grads and not bool(torch.stack([torch.isfinite(g).all() for g in grads.values()]).all()):
            name = next(n for n, g in grads.items() if not bool(torch.isfinite(g).all()))
            self._stop(trainer, f"the gradient of {name} is not finite")

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("state_dict") or {}
        for name, value in state.items():
            if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise NonFiniteLossError(
                    f"refusing to save a checkpoint at global step {trainer.global_step}: {name} is not finite; "
                    f"{_describe_last_checkpoint(trainer)}"
                )


# --------------------------------------------------------------------------------------------------------------------
# pre-emption
class SigtermCheckpoint(Callback):
    """Write ``last.ckpt`` when Lightning stops ``fit`` because of SIGTERM.

    Lightning's own SIGTERM handler lets the current training batch finish and then raises ``SIGTERMException``; at
    that point the training state is exactly the one a ``every_n_train_steps`` checkpoint would hold, so the saved
    checkpoint resumes cleanly with ``fit --ckpt_path last``. (SIGKILL cannot be caught: a killed run resumes from the
    last periodic checkpoint instead.) Nothing is saved during the sanity check, when no training state exists yet.
    """

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.sanity_checking or trainer.fast_dev_run:
            return
        if trainer.state.fn is None or trainer.state.fn.value != "fit":
            return
        path = last_checkpoint_path(trainer)
        if path is None:
            rank_zero_info("framer: SIGTERM received; no ModelCheckpoint, so no checkpoint was written")
            return
        trainer.save_checkpoint(path, weights_only=False)  # a full checkpoint: resumable
        exception.framer_checkpoint = str(path)  # for the CLI's exit message
        exception.framer_global_step = trainer.global_step
        rank_zero_info(f"framer: SIGTERM received: saved {path} at global step {trainer.global_step}")


class LastCheckpointAtEnd(Callback):
    """Write ``last.ckpt`` when ``fit`` ends normally, so it always holds the final step.

    With ``--checkpoint.every_n_train_steps N`` Lightning saves only every N steps (never at the end of an epoch), so
    without this ``last.ckpt`` of a finished run can lag behind its last step, and ``fit --ckpt_path last`` with a
    larger ``max_epochs`` would repeat steps. (Lightning's own end-of-fit save only writes ``last.ckpt`` when none was
    ever written.) Interrupted runs are handled by :class:`SigtermCheckpoint`.
    """

    def __init__(self) -> None:
        super().__init__()
        #: global step of the newest checkpoint this process saved (every save passes through ``on_save_checkpoint``)
        self.saved_step: int | None = None

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        self.saved_step = trainer.global_step

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        callback = trainer.checkpoint_callback
        if trainer.interrupted or trainer.fast_dev_run or callback is None or not getattr(callback, "save_last", False):
            return
        if self.saved_step == trainer.global_step:
            return  # the checkpoints of this step, last.ckpt with them, are written already
        path = last_checkpoint_path(trainer)
        if path is not None:
            trainer.save_checkpoint(path, weights_only=False)  # a full checkpoint: resumable


class RandomState(Callback):
    """Save the torch (CPU and CUDA), numpy and Python random states in checkpoints and restore them on resume.

    Only plain tensors, lists and numbers are stored, so checkpoints stay loadable with ``weights_only=True``.
    """

    def state_dict(self) -> dict[str, Any]:
        key, keys, pos, has_gauss, cached = np.random.get_state()
        version, internal, gauss_next = random.getstate()
        state: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "numpy": {
                "key": str(key),
                "keys": [int(k) for k in keys],
                "pos": int(pos),
                "has_gauss": int(has_gauss),
                "cached_gaussian": float(cached),
            },
            "python": {"version": int(version), "internal": list(internal), "gauss_next": gauss_next},
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "torch" in state_dict:
            torch.set_rng_state(state_dict["torch"])
        if "cuda" in state_dict and torch.cuda.is_available() and len(state_dict["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state_dict["cuda"])
        if "numpy" in state_dict:
            s = state_dict["numpy"]
            keys = np.asarray(s["keys"], dtype=np.uint32)
            np.random.set_state((s["key"], keys, s["pos"], s["has_gauss"], s["cached_gaussian"]))
        if "python" in state_dict:
            s = state_dict["python"]
            random.setstate((s["version"], tuple(s["internal"]), s["gauss_next"]))


def safety_callbacks() -> list[Callback]:
    """The callbacks every CLI trainer gets: stop at a non-finite loss or gradient, ``last.ckpt`` on SIGTERM and at
    the end of fit, random states in checkpoints."""
    return [FiniteGuard(), SigtermCheckpoint(), LastCheckpointAtEnd(), RandomState()]
