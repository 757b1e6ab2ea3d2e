"""``make demo``: train Crystalformer and CrystalFramer on the embedded Ewald data set, on CPU, in minutes.

    python -m framer.demo [--epochs 12] [--num-crystals 1000] [--width 32] [--layers 2] [--out runs/demo]

The data are random ionic crystals (at most ``--max-atoms`` atoms) labelled with their Ewald energy per atom,
generated on first use and cached under ``$FRAMER_DATA_DIR`` (default ``./data``). Both models use the paper's
recipe (standardised L1 loss, AdamW, inverse-sqrt decay, gradient clipping at 1, SWA over the last epochs, test on
the SWA weights) at a reduced size so the whole demo fits in a few minutes on two CPU cores: the sizes actually used
are printed. The table compares each model's test MAE with a baseline that always predicts the training mean.
Results go to ``<out>/summary.json`` and, per model, ``<out>/<model>/version_<n>/`` (metrics.csv, metrics.json,
predictions.csv, checkpoints).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

MODELS = {"crystalformer": "Crystalformer (distance only)", "crystalframer": "CrystalFramer (max frames)"}


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m framer.demo", description=__doc__.splitlines()[0])
    p.add_argument("--num-crystals", type=int, default=1000, help="crystals generated (80/10/10 split)")
    p.add_argument("--max-atoms", type=int, default=8, help="largest unit cell, atoms")
    p.add_argument("--epochs", type=int, default=12, help="training epochs per model")
    p.add_argument("--swa-epochs", type=int, default=3, help="final epochs averaged by SWA")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (paper: 5e-4 at batch 128-256)")
    p.add_argument("--width", type=int, default=32, help="model_dim (paper: 128)")
    p.add_argument("--layers", type=int, default=2, help="attention blocks (paper: 4)")
    p.add_argument("--heads", type=int, default=4, help="attention heads (paper: 8)")
    p.add_argument("--angle-basis", type=int, default=16, help="CrystalFramer angle Gaussians per axis (paper: 64)")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--out", default="runs/demo", help="output directory")
    p.add_argument("--data-dir", default=None, help="data root (default: $FRAMER_DATA_DIR or ./data)")
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--progress", action="store_true", help="show progress bars")
    return p.parse_args(argv)


def network_kwargs(args: argparse.Namespace, preset: str) -> dict:
    """The reduced-size network: the preset's frame settings with the demo's width and depth."""
    from framer.models import CrystalFramer

    kwargs = CrystalFramer.preset_kwargs(preset)
    kwargs.update(
        num_layers=args.layers,
        model_dim=args.width,
        num_heads=args.heads,
        ff_dim=4 * args.width,
        head_dim=args.width,
        dist_basis=32,
    )
    if preset != "crystalformer":
        kwargs.update(angle_basis=args.angle_basis, angle_width=1.0)
    return kwargs


def train_one(args: argparse.Namespace, preset: str, datamodule) -> dict:
    import functools

    import lightning.pytorch as pl
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    from framer.evaluate import run_final_tests
    from framer.module import CrystalRegressor, InverseSqrtLR

    pl.seed_everything(args.seed, verbose=False)
    module = CrystalRegressor(
        {"class_path": "framer.models.CrystalFramer", "init_args": network_kwargs(args, preset)},
        optimizer=functools.partial(torch.optim.AdamW, lr=args.lr, betas=(0.9, 0.98), weight_decay=1e-5),
        lr_scheduler=functools.partial(InverseSqrtLR, decay_steps=4000),
        swa_epochs=args.swa_epochs,
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=args.epochs,
        gradient_clip_val=1.0,
        logger=CSVLogger(args.out, name=preset),
        callbacks=[ModelCheckpoint(monitor="val/mae", mode="min", save_last=True)],
        enable_progress_bar=args.progress,
        enable_model_summary=False,
        log_every_n_steps=10,
        num_sanity_val_steps=0,
    )
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    fit_seconds = time.perf_counter() - start
    metrics = run_final_tests(trainer, module, datamodule)
    return {
        "model": preset,
        "description": MODELS[preset],
        "network": network_kwargs(args, preset),
        "num_params": sum(p.numel() for p in module.model.parameters()),
        "test_mae_swa": metrics.get("test/mae"),
        "test_mae_best_val": metrics.get("test_best/mae"),
        "best_val_mae": metrics.get("best_val/mae"),
        "fit_seconds": round(fit_seconds, 1),
        "total_seconds": round(time.perf_counter() - start, 1),
        "run_dir": trainer.logger.log_dir,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    import warnings

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=r".*(does not have many workers|smaller than the logging interval).*")
    for name in ("lightning.pytorch", "lightning.fabric"):
        import logging

        logging.getLogger(name).setLevel(logging.WARNING)

    from framer.data import EwaldDataModule

    started = time.perf_counter()
    datamodule = EwaldDataModule(
        num_crystals=args.num_crystals,
        max_atoms=args.max_atoms,
        batch_size=args.batch_size,
        test_batch_size=1,
        data_dir=args.data_dir,
        build_workers=min(2, os.cpu_count() or 1),
    )
    datamodule.prepare_data()
    datamodule.setup("fit")
    data_seconds = time.perf_counter() - started
    sizes = datamodule.split_sizes()
    train_y = np.array([r.target for r in datamodule.train_dataset])
    test_y = np.array([r.target for r in datamodule.test_dataset])
    baseline = float(np.abs(test_y - train_y.mean()).mean())
    print(
        f"framer demo: Ewald energy per atom (eV/atom) of {args.num_crystals} random ionic crystals "
        f"(<= {args.max_atoms} atoms; train/val/test {sizes['train']}/{sizes['val']}/{sizes['test']}); "
        f"data ready in {data_seconds:.0f} s",
        flush=True,
    )
    print(
        f"  networks: {args.layers} blocks, width {args.width}, {args.heads} heads (paper: 4, 128, 8); "
        f"{args.epochs} epochs at batch {args.batch_size}, lr {args.lr:g}, SWA over the last {args.swa_epochs}",
        flush=True,
    )
    results = []
    for preset in args.models:
        print(f"  training {MODELS[preset]} ...", flush=True)
        result = train_one(args, preset, datamodule)
        results.append(result)
        print(
            f"    test MAE {result['test_mae_swa']:.4f} eV/atom (SWA), {result['test_mae_best_val']:.4f} "
            f"(best-val checkpoint); {result['num_params']:,} parameters; {result['total_seconds']:.0f} s",
            flush=True,
        )
    total = time.perf_counter() - started
    print()
    print(f"{'model':<34}{'test MAE (eV/atom)':>20}{'vs. baseline':>14}")
    print(f"{'mean-of-train baseline':<34}{baseline:>20.4f}{1.0:>13.2f}x")
    for r in results:
        print(f"{r['description']:<34}{r['test_mae_swa']:>20.4f}{r['test_mae_swa'] / baseline:>13.2f}x")
    print(f"\ntotal {total / 60:.1f} min on {torch.get_num_threads()} CPU thread(s)")
    summary = {
        "data": {
            "num_crystals": args.num_crystals,
            "max_atoms": args.max_atoms,
            "splits": sizes,
            "target_std_train": float(train_y.std()),
            "seconds": round(data_seconds, 1),
        },
        "settings": {k: v for k, v in vars(args).items() if k not in ("out",)},
        "baseline_test_mae": baseline,
        "models": results,
        "total_seconds": round(total, 1),
        "torch_threads": torch.get_num_threads(),
    }
    from framer.io import write_json

    path = write_json(Path(args.out) / "summary.json", summary)
    print(f"summary: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
