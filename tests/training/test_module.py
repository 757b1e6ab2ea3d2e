"""CrystalRegressor: optimiser groups, schedule, SWA, standardisation, metrics, checkpoints, resume."""

from __future__ import annotations

import csv
import functools
import math

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from training_standins import TinyDataModule, TinyModel, quiet_trainer_kwargs

from framer.instantiate import callable_config, to_config
from framer.module import CrystalRegressor, InverseSqrtLR, parameter_groups


def make_module(swa_epochs: int = 1, lr: float = 5e-3, **kwargs) -> CrystalRegressor:
    optimizer = functools.partial(torch.optim.AdamW, lr=lr, betas=(0.9, 0.98), weight_decay=1e-5)
    return CrystalRegressor(TinyModel(hidden=8), optimizer=optimizer, swa_epochs=swa_epochs, **kwargs)


class Recorder(Callback):
    """Learning rate, loss and (optionally) the model's weights after every optimizer step."""

    def __init__(self, weights: bool = False):
        self.lrs, self.losses, self.weights, self.epochs = [], [], [], []
        self.keep_weights = weights

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])
        self.losses.append(float(outputs["loss"]))
        self.epochs.append(trainer.current_epoch)
        if self.keep_weights:
            self.weights.append({k: v.detach().clone() for k, v in pl_module.model.state_dict().items()})


def test_parameter_groups_exclude_bias_norm_and_frozen():
    net = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 1))
    net[2].weight.requires_grad_(False)
    groups = parameter_groups(net)
    decay = {id(p) for p in groups[0]["params"]}
    no_decay = {id(p) for p in groups[1]["params"]}
    assert decay == {id(net[0].weight)}
    assert no_decay == {id(net[0].bias), id(net[1].weight), id(net[1].bias), id(net[2].bias)}
    assert groups[1]["weight_decay"] == 0.0 and "weight_decay" not in groups[0]


def test_default_optimizer_is_the_papers():
    module = CrystalRegressor(TinyModel(hidden=4))
    config = module.configure_optimizers()
    opt, sched = config["optimizer"], config["lr_scheduler"]
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.defaults["lr"] == 5e-4 and opt.defaults["betas"] == (0.9, 0.98)
    assert [g["weight_decay"] for g in opt.param_groups] == [1e-5, 0.0]
    assert isinstance(sched["scheduler"], InverseSqrtLR) and sched["interval"] == "step"
    assert sched["scheduler"].decay_steps == 4000


def test_inverse_sqrt_schedule_values():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = InverseSqrtLR(opt, decay_steps=4000)
    lrs = []
    for _ in range(4001):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == 1.0
    assert lrs[4000] == pytest.approx(math.sqrt(0.5))
    assert lrs[100] == pytest.approx(math.sqrt(4000 / 4100))
    # the state survives a round trip
    fresh = InverseSqrtLR(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0), decay_steps=1)
    fresh.load_state_dict(sched.state_dict())
    assert fresh.decay_steps == 4000 and fresh.last_epoch == sched.last_epoch


def test_schedule_per_step_then_frozen_and_swa_is_the_mean_of_every_step(tmp_path):
    pl.seed_everything(0)
    dm = TinyDataModule(num_crystals=40, batch_size=8)  # 24 train crystals -> 3 steps per epoch
    module = make_module(swa_epochs=2, lr=1e-2)
    module.lr_scheduler_factory = functools.partial(InverseSqrtLR, decay_steps=2)  # visible decay
    recorder = Recorder(weights=True)
    trainer = pl.Trainer(**quiet_trainer_kwargs(max_epochs=5, callbacks=[recorder], default_root_dir=tmp_path))
    trainer.fit(module, datamodule=dm)

    assert trainer.global_step == 15
    # lr after step t (recorded after the optimizer step and scheduler step) is lr*sqrt(T/(T+t+1)) until SWA
    expected = [1e-2 * math.sqrt(2 / (2 + t + 1)) for t in range(9)]
    assert recorder.lrs[:9] == pytest.approx(expected)
    # epochs 3 and 4 average: lr frozen at the value it had when averaging began
    swa_steps = [i for i, e in enumerate(recorder.epochs) if e >= 3]
    assert len(swa_steps) == 6 and module.swa_steps == 6
    assert all(recorder.lrs[i] == pytest.approx(recorder.lrs[8]) for i in swa_steps)
    for key, value in module.swa_model.module.state_dict().items():
        mean = torch.stack([recorder.weights[i][key] for i in swa_steps]).mean(0)
        torch.testing.assert_close(value, mean, rtol=1e-5, atol=1e-6)


def test_target_stats_come_from_the_datamodule():
    dm = TinyDataModule(num_crystals=20)
    module = make_module()
    trainer = pl.Trainer(**quiet_trainer_kwargs(max_epochs=1, limit_train_batches=1, limit_val_batches=0))
    trainer.fit(module, datamodule=dm)
    mean, std = dm.target_stats()
    assert float(module.target_mean) == pytest.approx(mean)
    assert float(module.target_std) == pytest.approx(std)
    assert "target_mean" in module.state_dict() and "target_std" in module.state_dict()


def test_fixed_target_stats_are_kept():
    module = make_module(target_mean=1.5, target_std=2.0)
    trainer = pl.Trainer(**quiet_trainer_kwargs(max_epochs=1, limit_train_batches=1, limit_val_batches=0))
    trainer.fit(module, datamodule=TinyDataModule(num_crystals=20))
    assert float(module.target_mean) == 1.5 and float(module.target_std) == 2.0


class StopWhenBelow(Callback):
    def __init__(self, recorder: Recorder, factor: float):
        self.recorder, self.factor = recorder, factor

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        losses = self.recorder.losses
        if losses and min(losses[-3:]) <= losses[0] / self.factor:
            trainer.should_stop = True


@pytest.mark.parametrize("frame", ["max", pytest.param("none", marks=pytest.mark.slow)])
def test_real_model_overfits_eight_crystals(frame, tmp_path):
    """Tiny CrystalFramer (max frames) and Crystalformer memorise 8 Ewald crystals: loss / 10 within 300 steps."""
    from framer.data import EwaldDataModule

    pl.seed_everything(1)
    dm = EwaldDataModule(num_crystals=10, max_atoms=8, batch_size=8, build_workers=0, data_dir=str(tmp_path))
    network = {
        "class_path": "framer.models.CrystalFramer",
        "init_args": {
            "frame": frame,
            "num_layers": 1,
            "model_dim": 16,
            "num_heads": 2,
            "ff_dim": 32,
            "head_dim": 16,
            "dist_basis": 16,
            "angle_basis": 8,
            "angle_width": 1.0,
        },
    }
    module = CrystalRegressor(network, optimizer=functools.partial(torch.optim.AdamW, lr=3e-3), swa_epochs=0)
    module.lr_scheduler_factory = functools.partial(torch.optim.lr_scheduler.ConstantLR, factor=1.0)
    recorder = Recorder()
    trainer = pl.Trainer(
        **quiet_trainer_kwargs(
            max_steps=300, max_epochs=-1, limit_val_batches=0, callbacks=[recorder, StopWhenBelow(recorder, 10)]
        )
    )
    trainer.fit(module, datamodule=dm)
    assert dm.split_sizes()["train"] == 8
    assert min(recorder.losses[-3:]) <= recorder.losses[0] / 10, recorder.losses[::10]


def test_logged_val_mae_equals_offline_mae(tmp_path):
    pl.seed_everything(2)
    dm = TinyDataModule(num_crystals=60, batch_size=8)
    module = make_module(swa_epochs=1)
    logger = CSVLogger(tmp_path)
    trainer = pl.Trainer(**quiet_trainer_kwargs(max_epochs=2, logger=logger))
    trainer.fit(module, datamodule=dm)
    logged = float(trainer.callback_metrics["val/mae"])
    module.eval()
    errors = []
    with torch.no_grad():
        for batch in dm.val_dataloader():
            errors.append((module(batch, "raw") - batch.y).abs())
    offline = float(torch.cat(errors).mean())
    assert logged == pytest.approx(offline, rel=1e-6)
    # and it is what went into metrics.csv
    rows = (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    values = [r.split(",")[header.index("val/mae")] for r in rows[1:]]
    assert float([v for v in values if v][-1]) == pytest.approx(logged)


def test_load_from_checkpoint_needs_no_arguments_and_predicts_identically(tmp_path):
    pl.seed_everything(3)
    dm = TinyDataModule(num_crystals=40, batch_size=8)
    module = make_module(swa_epochs=1)
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer = pl.Trainer(**quiet_trainer_kwargs(max_epochs=2, callbacks=[ckpt], enable_checkpointing=True))
    trainer.fit(module, datamodule=dm)
    assert module.has_swa
    loaded = CrystalRegressor.load_from_checkpoint(tmp_path / "last.ckpt")
    module.eval()
    loaded.eval()
    assert isinstance(loaded.model, TinyModel) and loaded.model.hidden == 8
    assert loaded.swa_steps == module.swa_steps and float(loaded.target_std) == float(module.target_std)
    with torch.no_grad():
        for batch in dm.test_dataloader():
            for weights in ("swa", "raw"):
                torch.testing.assert_close(loaded(batch, weights), module(batch, weights), rtol=0, atol=0)
    # the checkpoint is plain data: loadable with weights_only=True, and hparams rebuild the module
    checkpoint = torch.load(tmp_path / "last.ckpt", weights_only=True)
    hparams = checkpoint["hyper_parameters"]
    assert hparams["model"] == {"class_path": "training_standins.TinyModel", "init_args": {"hidden": 8}}
    assert hparams["optimizer"]["class_path"].endswith("AdamW")
    assert checkpoint["framer_target"] == {"dataset_name": "tiny", "target": "toy", "target_units": "eV"}
    assert loaded.target_info["target"] == "toy"


def test_model_config_requires_recoverable_arguments():
    class Opaque(nn.Module):
        def __init__(self, width: int):
            super().__init__()
            self.lin = nn.Linear(width, 1)

    with pytest.raises(ValueError, match="width"):
        to_config(Opaque(3))

    class Stored(Opaque):
        def __init__(self, width: int):
            super().__init__(width)
            self.init_args = {"width": width}

    assert to_config(Stored(3))["init_args"] == {"width": 3}
    assert callable_config(functools.partial(torch.optim.Adam, lr=0.1)) == {
        "class_path": "torch.optim.Adam",
        "init_args": {"lr": 0.1},
    }


class StopAfter(Callback):
    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            trainer.should_stop = True


def test_resume_from_last_continues_step_count_and_schedule(tmp_path):
    def run(directory, callbacks, ckpt_path=None):
        pl.seed_everything(4)
        module = make_module(swa_epochs=1, lr=1e-2)
        module.lr_scheduler_factory = functools.partial(InverseSqrtLR, decay_steps=3)
        recorder = Recorder()
        ckpt = ModelCheckpoint(dirpath=directory, save_last=True, monitor="val/mae")
        trainer = pl.Trainer(
            **quiet_trainer_kwargs(max_epochs=4, callbacks=[ckpt, recorder, *callbacks], enable_checkpointing=True)
        )
        trainer.fit(module, datamodule=TinyDataModule(num_crystals=40, batch_size=8), ckpt_path=ckpt_path)
        return trainer, module, recorder

    full, full_module, full_rec = run(tmp_path / "full", [])
    first, _, _ = run(tmp_path / "cut", [StopAfter(1)])
    assert first.global_step == 6
    resumed, resumed_module, resumed_rec = run(tmp_path / "cut", [], ckpt_path=tmp_path / "cut" / "last.ckpt")
    assert resumed.global_step == full.global_step == 12
    assert len(resumed_rec.lrs) == 6  # only the remaining steps ran
    assert resumed_rec.lrs == pytest.approx(full_rec.lrs[6:])
    assert resumed_module.swa_steps == full_module.swa_steps == 3


def test_train_mae_of_an_epoch_counts_only_that_epoch_also_after_resume(tmp_path):
    """train/mae is checkpointed (a resume mid-epoch keeps the epoch's running value) and starts afresh each epoch,
    also when the run resumes from a checkpoint taken at the end of the previous epoch."""

    def run(name, max_epochs, ckpt_path=None):
        pl.seed_everything(4)
        recorder = Recorder()
        ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
        logger = CSVLogger(tmp_path, name=name)
        kwargs = quiet_trainer_kwargs(max_epochs=max_epochs, callbacks=[ckpt, recorder], enable_checkpointing=True)
        trainer = pl.Trainer(**{**kwargs, "logger": logger})
        module = make_module(swa_epochs=0)
        trainer.fit(module, datamodule=TinyDataModule(num_crystals=40, batch_size=8), ckpt_path=ckpt_path)
        rows = list(csv.DictReader(open(logger.log_dir + "/metrics.csv")))  # noqa: SIM115
        logged = {int(r["epoch"]): float(r["train/mae"]) for r in rows if r.get("train/mae")}
        return module, recorder, logged

    run("first", 1)
    module, recorder, logged = run("resumed", 2, ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert list(logged) == [1] and set(recorder.epochs) == {1}
    # equal batches (drop_last): the epoch's MAE is target_std times the mean standardised L1 loss of its batches
    expected = float(module.target_std) * sum(recorder.losses) / len(recorder.losses)
    assert logged[1] == pytest.approx(expected, rel=1e-5)
    assert "train_mae.sum_abs_error" in module.state_dict()


def _old_layout(checkpoint: dict) -> dict:
    """A checkpoint as framer wrote it before SWA was torch's AveragedModel and before hparams were recorded through
    ``save_hyperparameters()``: ``swa_model.<name>``, ``swa_n``, and hand-written ``_class_path``/``_instantiator``."""
    state = {}
    for key, value in checkpoint["state_dict"].items():
        if key == "swa_model.n_averaged":
            state["swa_n"] = value
        elif key.startswith("swa_model.module."):
            state["swa_model." + key.removeprefix("swa_model.module.")] = value
        else:
            state[key] = value
    hparams = {
        "_class_path": "framer.module.CrystalRegressor",
        "_instantiator": "lightning.pytorch.cli.instantiate_module",
        **checkpoint["hyper_parameters"],
    }
    return {**checkpoint, "state_dict": state, "hyper_parameters": hparams}


def test_checkpoints_in_the_old_swa_layout_load_and_resume(tmp_path):
    pl.seed_everything(6)
    dm = TinyDataModule(num_crystals=40, batch_size=8)
    module = make_module(swa_epochs=1)
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer = pl.Trainer(**quiet_trainer_kwargs(max_epochs=2, callbacks=[ckpt], enable_checkpointing=True))
    trainer.fit(module, datamodule=dm)
    new = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert {"swa_model.n_averaged", "swa_model.module.embed.weight"} <= set(new["state_dict"])
    torch.save(_old_layout(new), tmp_path / "old.ckpt")

    loaded = CrystalRegressor.load_from_checkpoint(tmp_path / "old.ckpt")
    assert loaded.swa_steps == module.swa_steps == 3
    module.eval()
    loaded.eval()
    with torch.no_grad():
        for batch in dm.test_dataloader():
            for weights in ("swa", "raw"):
                torch.testing.assert_close(loaded(batch, weights), module(batch, weights), rtol=0, atol=0)
    # a trainer resumes from it too: the average goes on from its 3 steps
    again = make_module(swa_epochs=2)
    trainer = pl.Trainer(**quiet_trainer_kwargs(max_epochs=3))
    trainer.fit(again, datamodule=dm, ckpt_path=tmp_path / "old.ckpt")
    assert trainer.global_step == 9 and again.swa_steps == 6


def test_a_checkpoint_loaded_in_python_trains_on(tmp_path):
    """Its optimizer and scheduler are recorded as {class_path, init_args}: they used to reach configure_optimizers
    as dicts and fail there."""
    pl.seed_everything(7)
    dm = TinyDataModule(num_crystals=40, batch_size=8)
    module = make_module(swa_epochs=0, lr=1e-2)
    module_scheduler = functools.partial(torch.optim.lr_scheduler.StepLR, step_size=2, gamma=0.5)
    module = CrystalRegressor(TinyModel(hidden=8), optimizer=module.optimizer_factory, lr_scheduler=module_scheduler)
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer = pl.Trainer(**quiet_trainer_kwargs(max_epochs=1, callbacks=[ckpt], enable_checkpointing=True))
    trainer.fit(module, datamodule=dm)
    hparams = torch.load(tmp_path / "last.ckpt", weights_only=True)["hyper_parameters"]
    assert hparams["optimizer"] == {
        "class_path": "torch.optim.AdamW",
        "init_args": {"lr": 1e-2, "betas": [0.9, 0.98], "weight_decay": 1e-5},
    }
    assert "_class_path" not in hparams and "_instantiator" not in hparams  # nothing written by hand
    loaded = CrystalRegressor.load_from_checkpoint(tmp_path / "last.ckpt")
    config = loaded.configure_optimizers()
    assert isinstance(config["optimizer"], torch.optim.AdamW) and config["optimizer"].defaults["lr"] == 1e-2
    assert isinstance(config["lr_scheduler"]["scheduler"], torch.optim.lr_scheduler.StepLR)
    trainer = pl.Trainer(**quiet_trainer_kwargs(max_epochs=1))
    trainer.fit(loaded, datamodule=dm)
    assert trainer.global_step == 3


def test_configs_use_the_public_spelling_of_class_paths():
    from framer.models import CrystalFramer

    network = CrystalFramer(num_layers=1, model_dim=8, num_heads=2, ff_dim=16, head_dim=8, dist_basis=8)
    assert to_config(network)["class_path"] == "framer.CrystalFramer"
    assert CrystalRegressor(network).hparams["model"]["class_path"] == "framer.CrystalFramer"
    assert callable_config(torch.optim.SGD) == {"class_path": "torch.optim.SGD"}
