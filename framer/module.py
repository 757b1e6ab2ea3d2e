"""CrystalRegressor: the LightningModule that trains any ``model(batch) -> (B,)`` regressor the paper's way.

Training recipe (model-spec.md §6):

- L1 loss on standardised targets ``(y - mean) / std`` with the train split's mean and population std, taken from
  the datamodule's ``target_stats()`` when ``fit`` starts and kept in buffers, so checkpoints carry them.
- AdamW (lr 5e-4, betas 0.9/0.98, weight decay 1e-5 on every trainable non-bias, non-norm weight).
- ``lr · sqrt(T / (T + step))`` with T = 4000 steps, stepped after every optimizer step (:class:`InverseSqrtLR`).
- Gradient-norm clipping at 1.0 (``trainer.gradient_clip_val``, set in ``conf/default.yaml``).
- Stochastic weight averaging over every optimizer step of the last ``swa_epochs`` epochs, with the learning rate
  frozen at its value when averaging starts. The average lives in ``swa_model`` (part of the state dict, so
  ``fit --ckpt_path last`` resumes it) and is what ``test`` and ``predict`` use by default, as in the paper.

Metrics are torchmetrics objects, one per stage, in physical units: ``train/mae``, ``val/mae``, ``test/mae``
(plus ``train/loss``, the standardised L1, and ``val_swa/mae`` while averaging). The running ``train/mae`` of the
current epoch is part of the state dict, so a run resumed in the middle of an epoch logs the same epoch value.

Networks, optimizers and schedulers named by class path (from Python, configs or checkpoints) are checked by
:mod:`framer.checkpoints` before anything is imported; ``load_from_checkpoint`` reads with ``weights_only=True``.
"""

from __future__ import annotations

import copy
import functools
import inspect
import math
import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
import yaml
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics import MeanAbsoluteError

from framer.checkpoints import (
    RefusedClassPath,
    check_checkpoint,
    check_module_hparams,
    follow_allowed_modules,
    resolve_class,
)
from framer.errors import UserError
from framer.io import to_plain

DEFAULT_LR = 5e-4
DEFAULT_BETAS = (0.9, 0.98)
DEFAULT_WEIGHT_DECAY = 1e-5
DEFAULT_DECAY_STEPS = 4000
TARGET_INFO_KEY = "framer_target"  # checkpoint entry with the dataset name, target and units
INSTANTIATOR = "lightning.pytorch.cli.instantiate_module"  # Lightning's allow-listed checkpoint instantiator


class ConfigurationError(UserError, ValueError):
    """A setting the training recipe cannot work with (e.g. a learning rate the optimizer rejects)."""


class InverseSqrtLR(torch.optim.lr_scheduler.LRScheduler):
    """Inverse square-root decay without warm-up: ``lr_t = lr · sqrt(T / (T + t))``, t counted in scheduler steps.

    Args:
        optimizer: The wrapped optimizer.
        decay_steps: T, the number of steps after which the learning rate has fallen by a factor sqrt(2).
        last_epoch: Index of the last step taken (-1 to start from scratch).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, decay_steps: int = DEFAULT_DECAY_STEPS, last_epoch: int = -1):
        if decay_steps <= 0:
            raise ValueError(f"decay_steps must be positive, got {decay_steps}")
        self.decay_steps = decay_steps
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:
        """Multiplier of the base learning rate after ``step`` steps."""
        return math.sqrt(self.decay_steps / (self.decay_steps + max(step, 0)))

    def get_lr(self) -> list[float]:
        return [base * self.factor(self.last_epoch) for base in self.base_lrs]


def default_optimizer(params: Iterable) -> torch.optim.Optimizer:
    """AdamW with the paper's settings (lr 5e-4, betas (0.9, 0.98), weight decay 1e-5)."""
    return torch.optim.AdamW(params, lr=DEFAULT_LR, betas=DEFAULT_BETAS, weight_decay=DEFAULT_WEIGHT_DECAY)


def default_lr_scheduler(optimizer: torch.optim.Optimizer) -> InverseSqrtLR:
    """The paper's inverse square-root schedule with T = 4000 steps."""
    return InverseSqrtLR(optimizer, decay_steps=DEFAULT_DECAY_STEPS)


def parameter_groups(model: nn.Module) -> list[dict[str, Any]]:
    """Trainable parameters split into a weight-decayed group and a group without decay.

    No decay for biases and for the parameters of normalisation layers (``*Norm*`` modules or names containing
    "norm"). Frozen parameters (``requires_grad=False``) are left out of both groups.
    """
    decay, no_decay = [], []
    for module_name, module in model.named_modules():
        is_norm = "norm" in type(module).__name__.lower() or "norm" in module_name.lower()
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            if is_norm or "bias" in name.lower() or "norm" in name.lower():
                no_decay.append(param)
            else:
                decay.append(param)
    groups = [{"params": decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def class_path(obj_or_cls: Any) -> str:
    cls = obj_or_cls if isinstance(obj_or_cls, type) else type(obj_or_cls)
    return f"{cls.__module__}.{cls.__qualname__}"


def model_config(model: nn.Module) -> dict[str, Any]:
    """``{"class_path", "init_args"}`` that rebuilds ``model`` (used to save modules built in Python).

    The constructor arguments come from an ``init_args``/``config``/``hparams`` mapping on the model if it has
    one, else from attributes named like the constructor's parameters. Unless the model stores its arguments, the
    result is checked by rebuilding the model and comparing parameter shapes; ValueError when they cannot be
    recovered, so no checkpoint is written that would silently rebuild a different network.
    """
    signature = inspect.signature(type(model).__init__)
    params = {
        name: p
        for name, p in signature.parameters.items()
        if name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }
    for attr in ("init_args", "config", "hparams", "_init_args"):
        stored = getattr(model, attr, None)
        if isinstance(stored, dict) and set(stored) <= set(params):
            try:
                return {"class_path": class_path(model), "init_args": to_plain(dict(stored), strict=True)}
            except TypeError:
                pass
    init_args: dict[str, Any] = {}
    for name, p in params.items():
        if hasattr(model, name):
            try:
                value = to_plain(getattr(model, name), strict=True)
            except TypeError:
                value = inspect.Parameter.empty
            if value is not inspect.Parameter.empty and (p.default is p.empty or value != p.default):
                init_args[name] = value
                continue
        if p.default is p.empty:
            raise ValueError(
                f"cannot recover the required argument {name!r} of {class_path(model)} to save it in checkpoints"
            )
    try:
        rebuilt = type(model)(**init_args)
    except Exception as err:
        raise ValueError(f"cannot rebuild {class_path(model)} from {init_args}: {err}") from err
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()} != expected:
        raise ValueError(
            f"cannot recover the constructor arguments of {class_path(model)} from the instance "
            "(rebuilding it gives other parameter shapes)"
        )
    return {"class_path": class_path(model), "init_args": init_args}


def build_from_config(config: dict[str, Any], source: str = "model config") -> nn.Module:
    """Instantiate the network ``{"class_path": "pkg.mod.Class", "init_args": {...}}``.

    The class path is checked before its module is imported (see :mod:`framer.checkpoints`) and the class must be a
    ``torch.nn.Module``; :class:`framer.checkpoints.RefusedClassPath` otherwise.
    """
    cls = resolve_class(config.get("class_path"), nn.Module, source, "model.class_path")
    return cls(**dict(config.get("init_args") or {}))


def callable_config(fn: Any) -> dict[str, Any] | None:
    """Config of an optimizer/scheduler callable: supports classes and ``functools.partial`` of classes."""
    if fn is None or fn in (default_optimizer, default_lr_scheduler):
        return None
    if isinstance(fn, functools.partial) and isinstance(fn.func, type) and not fn.args:
        try:
            return {"class_path": class_path(fn.func), "init_args": to_plain(dict(fn.keywords), strict=True)}
        except TypeError:
            return None
    if isinstance(fn, type):
        return {"class_path": class_path(fn)}
    return None


class CrystalRegressor(pl.LightningModule):
    """Regress one crystal property with any ``model(batch) -> (B,)`` network, following the paper's recipe.

    Args:
        model: The network; called on a :class:`framer.data.CrystalBatch` and returning one standardised value per
            crystal, shape (B,). From Python, a ``{"class_path", "init_args"}`` dict also works (and is what
            checkpoints store, so ``load_from_checkpoint(path)`` rebuilds it).
        optimizer: Builds the optimizer from parameter groups (weight-decayed weights, then biases without decay).
            Default: AdamW(lr=5e-4, betas=(0.9, 0.98), weight_decay=1e-5).
        lr_scheduler: Builds a scheduler that is stepped after every optimizer step. Default: InverseSqrtLR with
            decay_steps=4000. Set ``torch.optim.lr_scheduler.ConstantLR`` with ``factor: 1.0`` for a constant rate.
        swa_epochs: Average the weights after every optimizer step of the last ``swa_epochs`` epochs of
            ``trainer.max_epochs``, with the learning rate frozen (0 disables SWA).
        eval_weights: Weights used by ``test`` and ``predict``: ``swa`` (the average, when one exists; what the
            paper reports) or ``raw`` (the trained weights). Validation always uses the raw weights.
        target_mean: Mean used to standardise targets. Default: the train split's, from the datamodule's
            ``target_stats()`` at the start of ``fit``.
        target_std: Population standard deviation used to standardise targets (same default as ``target_mean``).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        swa_epochs: int = 50,
        eval_weights: Literal["swa", "raw"] = "swa",
        target_mean: float | None = None,
        target_std: float | None = None,
    ) -> None:
        super().__init__()
        if isinstance(model, dict):  # {"class_path": ..., "init_args": {...}} from Python: exact hparams
            self._model_config = {"class_path": model["class_path"], "init_args": dict(model.get("init_args") or {})}
            model = build_from_config(self._model_config)
        else:
            self._model_config = None
        if swa_epochs < 0:
            raise ValueError(f"swa_epochs must be >= 0, got {swa_epochs}")
        if eval_weights not in ("swa", "raw"):
            raise ValueError(f"eval_weights must be 'swa' or 'raw', got {eval_weights!r}")
        if target_std is not None and not target_std > 0:
            raise ValueError(f"target_std must be positive, got {target_std}")
        self._save_hparams(model, optimizer, lr_scheduler, swa_epochs, eval_weights, target_mean, target_std)
        self.model = model
        self.optimizer_factory = optimizer or default_optimizer
        self.lr_scheduler_factory = lr_scheduler or default_lr_scheduler
        self.swa_epochs = swa_epochs
        self.eval_weights = eval_weights
        self._fixed_stats = target_mean is not None or target_std is not None
        self.register_buffer("target_mean", torch.tensor(0.0 if target_mean is None else float(target_mean)))
        self.register_buffer("target_std", torch.tensor(1.0 if target_std is None else float(target_std)))
        # The SWA average: a frozen copy of the model plus the number of averaged steps, both in the state dict.
        self.swa_model: nn.Module | None = None
        if swa_epochs > 0:
            self.swa_model = copy.deepcopy(model)
            self.swa_model.requires_grad_(False)
        self.register_buffer("swa_n", torch.tensor(0, dtype=torch.long))
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
    def _save_hparams(self, model, optimizer, lr_scheduler, swa_epochs, eval_weights, target_mean, target_std):
        from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters

        if _given_hyperparameters.get() is not None:  # built by LightningCLI: it stores the parsed config itself
            self.save_hyperparameters()
            return
        try:
            config = self._model_config or model_config(model)
        except ValueError as err:
            warnings.warn(
                f"{err}; checkpoints of this module will need the network passed back: "
                "load_from_checkpoint(path, model=...). Store the constructor arguments in `model.init_args` (a dict) "
                "or build the module through the CLI to avoid this.",
                stacklevel=3,
            )
            config = None
        hparams = {
            "_class_path": class_path(self),
            "_instantiator": INSTANTIATOR,
            "model": config,
            "optimizer": callable_config(optimizer),
            "lr_scheduler": callable_config(lr_scheduler),
            "swa_epochs": swa_epochs,
            "eval_weights": eval_weights,
            "target_mean": target_mean,
            "target_std": target_std,
        }
        self.save_hyperparameters(hparams)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        for key in ("dataset_name", "target", "target_units"):
            value = getattr(datamodule, key, None)
            if isinstance(value, str):
                self.target_info[key] = value
        checkpoint[TARGET_INFO_KEY] = dict(self.target_info)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # keep the checkpoint's own config, so a re-saved checkpoint rebuilds exactly as the original did
        stored = checkpoint.get(self.CHECKPOINT_HYPER_PARAMS_KEY)
        if isinstance(stored, dict) and "model" in stored:
            self._set_hparams(dict(stored))
        self.target_info = dict(checkpoint.get(TARGET_INFO_KEY) or {})
        # checkpoints written before train/mae was checkpointed: start that epoch's running MAE afresh
        state = checkpoint.get("state_dict")
        if isinstance(state, dict):
            for key, value in self.state_dict().items():
                if key.startswith("train_mae") and key not in state:
                    state[key] = value

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
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
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
        return self.destandardise(self._net(weights)(batch).reshape(-1))

    def _net(self, weights: str) -> nn.Module:
        if weights == "swa" and self.has_swa:
            return self.swa_model
        return self.model

    @property
    def has_swa(self) -> bool:
        """Whether an SWA average exists (at least one averaged step)."""
        return self.swa_model is not None and int(self.swa_n) > 0

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
        if self._trainer is not None and self.trainer.optimizers:
            lr = self.trainer.optimizers[0].param_groups[0]["lr"]
            self.log("train/lr", lr, on_step=True, on_epoch=False, batch_size=n)
        return loss

    def on_fit_start(self) -> None:
        start = self.swa_start_epoch
        if start == 0 and not self.trainer.fast_dev_run:
            warnings.warn(
                f"swa_epochs ({self.swa_epochs}) >= max_epochs ({self.trainer.max_epochs}): weights are averaged from"
                " the first step with the learning rate frozen; lower swa_epochs for short runs",
                stacklevel=2,
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
        """First epoch of weight averaging, or None when SWA is off or ``max_epochs`` is unbounded."""
        if self.swa_model is None or self._trainer is None:
            return None
        max_epochs = self.trainer.max_epochs
        if max_epochs is None or max_epochs < 0:
            return None
        return max(0, max_epochs - self.swa_epochs)

    @property
    def in_swa_phase(self) -> bool:
        start = self.swa_start_epoch
        return start is not None and self.current_epoch >= start

    def lr_scheduler_step(self, scheduler, metric) -> None:
        if self.in_swa_phase:
            return  # the learning rate stays frozen while averaging
        if metric is None:
            scheduler.step()
        else:
            scheduler.step(metric)

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
        if self.in_swa_phase:
            start = self.swa_start_epoch
            if int(self.swa_epoch) != start:  # an average from an earlier, shorter schedule does not count
                self.swa_n.zero_()
                self.swa_epoch.fill_(start)
            self.update_swa()

    @torch.no_grad()
    def update_swa(self) -> None:
        """Fold the current weights into the running uniform average (floating tensors) or copy them (others)."""
        n = int(self.swa_n)
        averaged = self.swa_model.state_dict(keep_vars=True)
        current = self.model.state_dict(keep_vars=True)
        for key, avg in averaged.items():
            value = current[key].detach()
            if n == 0 or not avg.is_floating_point():
                avg.detach().copy_(value)
            else:
                avg.detach().add_(value - avg.detach(), alpha=1.0 / (n + 1))
        self.swa_n += 1
