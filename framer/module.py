"""CrystalRegressor: the LightningModule that trains any ``model(batch) -> (B,)`` regressor the paper's way.

Training recipe (the paper's; README "Training", ``conf/default.yaml``):

- L1 loss on standardised targets ``(y - mean) / std`` with the train split's mean and population std, taken from
  the datamodule's ``target_stats()`` when ``fit`` starts and kept in buffers, so checkpoints carry them.
- AdamW (lr 5e-4, betas 0.9/0.98, weight decay 1e-5 on every trainable non-bias, non-norm weight).
- ``lr · sqrt(T / (T + step))`` with T = 4000 steps, stepped after every optimizer step (:class:`InverseSqrtLR`).
- Gradient-norm clipping at 1.0 (``trainer.gradient_clip_val``, set in ``conf/default.yaml``).
- Stochastic weight averaging over every optimizer step of the last ``swa_epochs`` epochs (or fraction of the run),
  with the learning rate frozen. The average is torch's ``AveragedModel`` in ``swa_model`` (parameters averaged,
  buffers kept equal to the trained network's; in the state dict, so ``fit --ckpt_path last`` resumes it) and is what
  ``test`` and ``predict`` use by default, as in the paper. A fit whose SWA window never came warns in one line; its
  test then uses the raw weights.

Metrics (torchmetrics, physical units): ``train/mae``, ``val/mae``, ``test/mae``, ``train/loss`` (the standardised
L1) and ``val_swa/mae`` while averaging. The running ``train/mae`` of the current epoch is in the state dict, so a run
resumed in the middle of an epoch logs the same epoch value. Loading is safe: see :meth:`load_from_checkpoint`.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
import yaml
from lightning.pytorch.callbacks import Timer
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from torch.optim.swa_utils import AveragedModel
from torchmetrics import MeanAbsoluteError

from framer.checkpoints import check_checkpoint, check_module_hparams
from framer.errors import UserError
from framer.instantiate import RefusedClassPath, build, callable_config, factory, follow_allowed_modules, to_config

TARGET_INFO_KEY = "framer_target"  # checkpoint entry with the dataset name, target and units


class ConfigurationError(UserError, ValueError):
    """A setting the training recipe cannot work with (e.g. a learning rate the optimizer rejects)."""


class InverseSqrtLR(torch.optim.lr_scheduler.LRScheduler):
    """Inverse square-root decay without warm-up: ``lr_t = lr · sqrt(T / (T + t))``, t counted in scheduler steps.

    ``decay_steps`` (T) in (0, 1) is a fraction of the run's total steps, :attr:`run_steps`, which
    :class:`CrystalRegressor` sets before every step (:func:`run_steps`; until then the rate stays at its base value).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, decay_steps: float = 4000, last_epoch: int = -1) -> None:
        if not decay_steps > 0:
            raise ValueError(f"decay_steps must be positive, got {decay_steps}")
        self.decay_steps = decay_steps
        #: total optimizer steps of the run, for a fractional ``decay_steps``
        self.run_steps = math.inf
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        decay = self.decay_steps if self.decay_steps >= 1 else self.decay_steps * self.run_steps
        factor = math.sqrt(decay / (decay + max(self.last_epoch, 0))) if math.isfinite(decay) else 1.0
        return [base * factor for base in self.base_lrs]


def default_optimizer(params: Iterable) -> torch.optim.Optimizer:
    """AdamW with the paper's settings (lr 5e-4, betas (0.9, 0.98), weight decay 1e-5)."""
    return torch.optim.AdamW(params, lr=5e-4, betas=(0.9, 0.98), weight_decay=1e-5)


def run_steps(trainer: pl.Trainer) -> float:
    """Total optimizer steps of the run: from ``max_epochs``/``max_steps`` (Lightning's estimate), or, when
    ``max_time`` ends the run sooner, ``steps so far × max_time / time elapsed``; inf while unknown. Under
    ``max_time`` the estimate is updated every step and rank 0's is used by every rank."""
    total = float(trainer.estimated_stepping_batches)
    timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
    remaining = timer.time_remaining() if timer is not None else None
    if remaining is None:
        return total
    elapsed = timer.time_elapsed()
    if trainer.global_step > 0 and elapsed > 0:
        total = min(total, trainer.global_step * (elapsed + remaining) / elapsed)
    return float(trainer.strategy.broadcast(total))


def parameter_groups(model: nn.Module) -> list[dict[str, Any]]:
    """Trainable parameters in a weight-decayed group and a group without decay: biases and the parameters of
    normalisation layers (``*Norm*`` modules or names containing "norm"). Frozen parameters are in neither."""
    decay, no_decay = [], []
    for module_name, module in model.named_modules():
        is_norm = "norm" in type(module).__name__.lower() or "norm" in module_name.lower()
        for name, param in module.named_parameters(recurse=False):
            if param.requires_grad:
                plain = not (is_norm or "bias" in name.lower() or "norm" in name.lower())
                (decay if plain else no_decay).append(param)
    groups = [{"params": decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


class CrystalRegressor(pl.LightningModule):
    """Regress one crystal property with any ``model(batch) -> (B,)`` network, following the paper's recipe.

    Args:
        model: The network; called on a :class:`framer.data.CrystalBatch` and returning one standardised value per
            crystal, shape (B,). From Python, a ``{"class_path", "init_args"}`` dict also works (and is what
            checkpoints store, so ``load_from_checkpoint(path)`` rebuilds it).
        optimizer: Builds the optimizer from parameter groups (weight-decayed weights, then biases without decay).
            Default: AdamW(lr=5e-4, betas=(0.9, 0.98), weight_decay=1e-5). From Python, a config dict also works.
        lr_scheduler: Builds a scheduler that is stepped after every optimizer step. Default: InverseSqrtLR with
            decay_steps=4000. ``torch.optim.lr_scheduler.ConstantLR`` with ``factor: 1.0`` gives a constant rate.
            From Python, a config dict also works.
        swa_epochs: Average the weights after every optimizer step of the last ``swa_epochs`` epochs of
            ``trainer.max_epochs``, with the learning rate frozen (0 disables SWA). A value in (0, 1) is a fraction of
            the run: averaging starts at the first step past ``(1 - swa_epochs)`` of :func:`run_steps`, so it also
            works for runs bounded by ``max_steps`` or ``max_time``.
        eval_weights: Weights used by ``test`` and ``predict``: ``swa`` (the average, when one exists; what the
            paper reports) or ``raw`` (the trained weights). Validation always uses the raw weights.
        target_mean, target_std: Mean and population standard deviation used to standardise targets. Default: the
            train split's, from the datamodule's ``target_stats()`` at the start of ``fit``.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        swa_epochs: int | float = 50,
        eval_weights: Literal["swa", "raw"] = "swa",
        target_mean: float | None = None,
        target_std: float | None = None,
    ) -> None:
        super().__init__()
        with warnings.catch_warnings():  # a network given as an object is recorded as its config just below
            warnings.filterwarnings("ignore", message=r".*is an instance of `nn.Module`")
            self.save_hyperparameters()  # under LightningCLI, the parsed config; from Python, the arguments
        self._record_as_configs(model, optimizer, lr_scheduler)
        if isinstance(model, Mapping):  # {"class_path": ..., "init_args": {...}}
            model = build(model, nn.Module, "model config")
        if isinstance(optimizer, Mapping):
            optimizer = factory(optimizer, torch.optim.Optimizer, "optimizer config", "optimizer")
        if isinstance(lr_scheduler, Mapping):
            scheduler = torch.optim.lr_scheduler.LRScheduler
            lr_scheduler = factory(lr_scheduler, scheduler, "scheduler config", "lr_scheduler")
        if not (0 <= swa_epochs < 1 or float(swa_epochs).is_integer()):
            raise ValueError(f"swa_epochs must be a whole number of epochs or a fraction in (0, 1), got {swa_epochs}")
        if eval_weights not in ("swa", "raw"):
            raise ValueError(f"eval_weights must be 'swa' or 'raw', got {eval_weights!r}")
        if target_std is not None and not target_std > 0:
            raise ValueError(f"target_std must be positive, got {target_std}")
        self.model = model
        self.optimizer_factory = optimizer or default_optimizer
        self.lr_scheduler_factory = lr_scheduler or InverseSqrtLR  # T = 4000 steps, the paper's
        self.swa_epochs = swa_epochs if swa_epochs < 1 else int(swa_epochs)
        self._in_swa_fraction = False  # this batch is in the window of a fractional swa_epochs (set per batch)
        self.eval_weights = eval_weights
        self._fixed_stats = target_mean is not None or target_std is not None
        self.register_buffer("target_mean", torch.tensor(0.0 if target_mean is None else float(target_mean)))
        self.register_buffer("target_std", torch.tensor(1.0 if target_std is None else float(target_std)))
        # The SWA average: a frozen copy of the network and the number of averaged steps, both in the state dict.
        self.swa_model = AveragedModel(model, use_buffers=False).requires_grad_(False) if swa_epochs > 0 else None
        # first epoch of the phase the average covers: a resumed run with more epochs starts a fresh average
        self.register_buffer("swa_epoch", torch.tensor(-1, dtype=torch.long))
        self.train_mae = MeanAbsoluteError()
        # the running train/mae of the epoch in progress is checkpointed with the epoch it belongs to, so a run
        # resumed mid-epoch logs the same epoch value as an uninterrupted one
        self.train_mae.persistent(True)
        self.register_buffer("train_mae_epoch", torch.tensor(-1, dtype=torch.long))
        self.val_mae = MeanAbsoluteError()
        self.val_swa_mae = MeanAbsoluteError()
        self.test_mae = MeanAbsoluteError()
        #: Name prefix of the test metrics; the CLI sets ``test_best`` when it tests the best-val checkpoint.
        self.test_prefix = "test"
        #: Dataset name, target and units of the training data (saved in checkpoints, shown by ``framer.predict``).
        self.target_info: dict[str, str] = {}
        #: (ids, targets, predictions) of the last test run, physical units, in loader order.
        self.test_predictions: list[tuple[str, float, float]] = []

    # ----------------------------------------------------------------------------------------------------------------
    # hyperparameters: checkpoints must rebuild the module with no extra argument
    def _record_as_configs(self, model: Any, optimizer: Any, lr_scheduler: Any) -> None:
        """Replace arguments given as Python objects in the recorded hyperparameters by their configs (under
        LightningCLI and when loading a checkpoint they are configs already and are kept as recorded)."""
        hparams = dict(self.hparams)
        if isinstance(model, nn.Module) and not isinstance(hparams.get("model"), Mapping):
            try:
                hparams["model"] = to_config(model)
            except ValueError as err:
                warnings.warn(
                    f"{err}; checkpoints of this module will need the network passed back: "
                    "load_from_checkpoint(path, model=...). Store the constructor arguments in `model.init_args` "
                    "(a dict) or build the module through the CLI to avoid this.",
                    stacklevel=3,
                )
                hparams["model"] = None
        for key, value in (("optimizer", optimizer), ("lr_scheduler", lr_scheduler)):
            if value is not None and not isinstance(hparams.get(key), Mapping):
                hparams[key] = callable_config(value)
        if hparams != dict(self.hparams):
            self.save_hyperparameters(hparams)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        datamodule = getattr(self.attached_trainer, "datamodule", None)
        for key in ("dataset_name", "target", "target_units"):
            value = getattr(datamodule, key, None)
            if isinstance(value, str):
                self.target_info[key] = value
        checkpoint[TARGET_INFO_KEY] = dict(self.target_info)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # keep the checkpoint's own config, so a re-saved checkpoint rebuilds exactly as the original did
        stored = checkpoint.get(self.CHECKPOINT_HYPER_PARAMS_KEY)
        if isinstance(stored, dict) and "model" in stored:
            self.hparams.update(stored)
        self.target_info = dict(checkpoint.get(TARGET_INFO_KEY) or {})
        state = checkpoint.get("state_dict")
        if isinstance(state, dict):
            self._migrate_swa_keys(state)
            # checkpoints written before train/mae was checkpointed: start that epoch's running MAE afresh
            for key, value in self.state_dict().items():
                if key.startswith("train_mae") and key not in state:
                    state[key] = value

    def _migrate_swa_keys(self, state: dict[str, Any]) -> None:
        """Checkpoints written before the average was an ``AveragedModel``: ``swa_model.<name>`` becomes
        ``swa_model.module.<name>`` and the step count ``swa_n`` becomes ``swa_model.n_averaged``."""
        count = state.pop("swa_n", None)
        if self.swa_model is None:
            return
        if count is not None and "swa_model.n_averaged" not in state:
            state["swa_model.n_averaged"] = count
        old = [k for k in state if k.startswith("swa_model.") and not k.startswith("swa_model.module.")]
        for key in old:
            if key != "swa_model.n_averaged":
                state["swa_model.module." + key.removeprefix("swa_model.")] = state.pop(key)

    @classmethod
    def load_from_checkpoint(
        cls,
        checkpoint_path: str | os.PathLike,
        map_location: Any = None,
        hparams_file: str | os.PathLike | None = None,
        strict: bool | None = None,
        weights_only: bool | None = None,
        **kwargs: Any,
    ):
        """Lightning's ``load_from_checkpoint``, safe for checkpoints from anyone.

        The file (local path or fsspec URL) is read with ``weights_only=True``, and the class paths it (and
        ``hparams_file``) would rebuild the module from are checked before anything is imported: see
        :mod:`framer.checkpoints`. Raises :class:`framer.checkpoints.CheckpointError` for a missing, corrupt or
        code-carrying file and :class:`framer.checkpoints.RefusedClassPath` for a class outside the allowed packages
        or of the wrong kind. Keyword arguments override the stored hyperparameters (e.g. ``model=network``).
        """
        if weights_only is False:
            raise ValueError(
                "framer loads checkpoints with weights_only=True only; for a file you trust that holds other Python "
                "objects, use torch.load(path, weights_only=False) yourself"
            )
        if not isinstance(checkpoint_path, (str, os.PathLike)):
            raise TypeError(f"checkpoint_path must be a path or URL, not {type(checkpoint_path).__name__}")
        check_checkpoint(checkpoint_path, cls, overridden=kwargs)
        if hparams_file is not None:
            try:
                hparams = yaml.safe_load(Path(hparams_file).read_text())
            except yaml.YAMLError as err:
                raise RefusedClassPath(f"hparams file {hparams_file} is not plain YAML ({err})") from None
            if isinstance(hparams, dict):
                hparams = {key: value for key, value in hparams.items() if key not in kwargs}
            check_module_hparams(hparams, cls, f"hparams file {hparams_file}")
        follow_allowed_modules()  # Lightning rebuilds the module through jsonargparse
        return super().load_from_checkpoint(
            checkpoint_path,
            map_location=map_location,
            hparams_file=hparams_file,
            strict=strict,
            weights_only=True,
            **kwargs,
        )

    # ----------------------------------------------------------------------------------------------------------------
    # target standardisation
    def setup(self, stage: str) -> None:
        if stage != "fit" or self._fixed_stats:
            return
        datamodule = getattr(self.attached_trainer, "datamodule", None)
        stats = getattr(datamodule, "target_stats", None)
        if stats is None:
            warnings.warn(
                "the datamodule has no target_stats(); training on unstandardised targets (mean 0, std 1)",
                stacklevel=2,
            )
            return
        mean, std = (float(v) for v in stats())
        if not (math.isfinite(mean) and math.isfinite(std)):
            raise ValueError(f"target statistics are not finite (mean {mean}, std {std})")
        self.target_mean.fill_(mean)
        self.target_std.fill_(std if std > 0 else 1.0)

    def standardise(self, y: torch.Tensor) -> torch.Tensor:
        return (y - self.target_mean) / self.target_std

    def destandardise(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.target_std + self.target_mean

    # ----------------------------------------------------------------------------------------------------------------
    # forward passes
    def forward(self, batch, weights: Literal["raw", "swa"] = "raw") -> torch.Tensor:
        """Predictions in physical units, shape (B,)."""
        net = self.swa_model if weights == "swa" and self.has_swa else self.model
        return self.destandardise(net(batch).reshape(-1))

    @property
    def swa_steps(self) -> int:
        """Optimizer steps in the SWA average (0 without one)."""
        return int(self.swa_model.n_averaged) if self.swa_model is not None else 0

    @property
    def has_swa(self) -> bool:
        """Whether an SWA average exists (at least one averaged step)."""
        return self.swa_steps > 0

    @property
    def attached_trainer(self) -> pl.Trainer | None:
        """The trainer this module is attached to, or None (Lightning's ``trainer`` raises when there is none)."""
        try:
            return self.trainer
        except RuntimeError:
            return None

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        scheduler = self.lr_schedulers()
        decays_by_fraction = isinstance(scheduler, InverseSqrtLR) and scheduler.decay_steps < 1
        if not (0 < self.swa_epochs < 1 or decays_by_fraction):
            return  # nothing depends on the run's length
        steps = run_steps(self.trainer)
        if decays_by_fraction:
            scheduler.run_steps = steps
        self._in_swa_fraction = 0 < self.swa_epochs < 1 and self.global_step >= (1 - self.swa_epochs) * steps

    def on_train_epoch_start(self) -> None:
        if int(self.train_mae_epoch) != self.current_epoch:  # not a resume in the middle of this epoch
            self.train_mae.reset()

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        z = self.model(batch).reshape(-1)
        loss = torch.nn.functional.l1_loss(z, self.standardise(batch.y))
        self.train_mae(self.destandardise(z.detach()), batch.y)
        self.train_mae_epoch.fill_(self.current_epoch)
        n = len(batch)
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=n)
        self.log("train/mae", self.train_mae, on_step=False, on_epoch=True, batch_size=n)
        if self.attached_trainer is not None and self.trainer.optimizers:
            lr = self.trainer.optimizers[0].param_groups[0]["lr"]
            self.log("train/lr", lr, on_step=True, on_epoch=False, batch_size=n)
        return loss

    def on_fit_start(self) -> None:
        if self.swa_start_epoch == 0 and not self.trainer.fast_dev_run:
            warnings.warn(
                f"swa_epochs ({self.swa_epochs}) >= max_epochs ({self.trainer.max_epochs}): weights are averaged from"
                " the first step with the learning rate frozen; lower swa_epochs for short runs",
                stacklevel=2,
            )

    def on_train_end(self) -> None:
        if self.swa_model is None or self.has_swa or self.trainer.fast_dev_run:
            return
        window = (
            f"the last {self.swa_epochs:g} of the run's steps"
            if self.swa_epochs < 1
            else f"epoch {self.swa_start_epoch} on (max_epochs - swa_epochs)"
            if self.swa_start_epoch is not None
            else "never (max_epochs is unbounded)"
        )
        rank_zero_warn(
            f"SWA never ran: training stopped at epoch {self.current_epoch}, global step {self.global_step}, before "
            f"its window ({window}); the final test uses the raw weights. For runs bounded by max_time or max_steps "
            "give model.init_args.swa_epochs as a fraction of the run, e.g. 0.1"
        )

    def on_train_start(self) -> None:
        # drop whatever the sanity check accumulated
        self.val_mae.reset()
        self.val_swa_mae.reset()

    def validation_step(self, batch, batch_idx: int) -> None:
        n = len(batch)
        self.val_mae(self(batch, "raw"), batch.y)
        self.log("val/mae", self.val_mae, on_step=False, on_epoch=True, prog_bar=True, batch_size=n)
        if self.has_swa and not self.trainer.sanity_checking:
            self.val_swa_mae(self(batch, "swa"), batch.y)
            self.log("val_swa/mae", self.val_swa_mae, on_step=False, on_epoch=True, batch_size=n)

    def on_test_start(self) -> None:
        self.test_predictions = []

    def test_step(self, batch, batch_idx: int) -> None:
        pred = self(batch, self.eval_weights)
        self.test_mae(pred, batch.y)
        self.log(f"{self.test_prefix}/mae", self.test_mae, on_step=False, on_epoch=True, batch_size=len(batch))
        self.test_predictions.extend(zip(batch.ids, batch.y.tolist(), pred.tolist()))

    def predict_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        return {"ids": list(batch.ids), "prediction": self(batch, self.eval_weights).float().cpu()}

    # ----------------------------------------------------------------------------------------------------------------
    # optimisation and SWA
    def configure_optimizers(self):
        try:
            optimizer = self.optimizer_factory(parameter_groups(self.model))
            scheduler = self.lr_scheduler_factory(optimizer)
        except (ValueError, TypeError) as err:  # e.g. torch's "Invalid learning rate: -1.0"
            raise ConfigurationError(f"the optimizer or learning-rate scheduler rejected its settings: {err}") from err
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}

    @property
    def swa_start_epoch(self) -> int | None:
        """First epoch of weight averaging; None when SWA is off or a fraction of the run, or max_epochs unbounded."""
        if self.swa_model is None or self.attached_trainer is None or self.swa_epochs < 1:
            return None
        max_epochs = self.trainer.max_epochs
        if max_epochs is None or max_epochs < 0:
            return None
        return max(0, max_epochs - self.swa_epochs)

    @property
    def in_swa_phase(self) -> bool:
        if 0 < self.swa_epochs < 1:
            return self._in_swa_fraction
        start = self.swa_start_epoch
        return start is not None and self.current_epoch >= start

    def lr_scheduler_step(self, scheduler, metric) -> None:
        if not self.in_swa_phase:  # the learning rate stays frozen while averaging
            super().lr_scheduler_step(scheduler, metric)

    def optimizer_step(self, *args, **kwargs) -> None:
        try:
            super().optimizer_step(*args, **kwargs)
        except RuntimeError as err:
            # torch refuses an update too large for the weights' dtype (e.g. AdamW with lr 1e38): a non-finite stop
            if type(err) is not RuntimeError or "overflow" not in str(err):
                raise
            lrs = sorted({float(group["lr"]) for group in self.trainer.optimizers[0].param_groups})
            raise FloatingPointError(
                f"the optimizer step at global step {self.global_step} overflowed ({err}); the learning rate "
                f"{', '.join(f'{lr:g}' for lr in lrs)} is too large. Lower it before resuming"
            ) from err
        if self.swa_model is None:
            return
        if not self.in_swa_phase:
            self.swa_epoch.fill_(-1)  # the next phase (of a resumed, longer run) starts a fresh average
            return
        marker = int(self.swa_epoch)
        start = self.swa_start_epoch if self.swa_epochs >= 1 else (marker if marker >= 0 else self.current_epoch)
        if marker != start:  # an average from an earlier, shorter schedule does not count
            self.swa_model.n_averaged.zero_()
            self.swa_epoch.fill_(start)
        with torch.no_grad():
            self.swa_model.update_parameters(self.model)
