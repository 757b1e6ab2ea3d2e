"""The final evaluation of a run: after ``fit``, test on one device and write the run's results.

Global rank 0 tests the final module (its SWA average when it has one: ``test/mae``, the paper's number) and the
best-``val/mae`` checkpoint (``test_best/mae``) on a single device, so no test sample is padded or dropped as a
DistributedSampler would. The run directory gets ``results.json``, the test predictions of both and ``figures/``; the
run's loggers (CSV, MLflow) get the metrics and files.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar, TQDMProgressBar
from lightning.pytorch.loggers import Logger

from framer.module import CrystalRegressor
from framer.rundir import RunDir
from framer.tracking import log_artifacts, run_dir, without_device_lines


def one_device_trainer(trainer: Trainer, logger: list[Logger] | bool = False) -> Trainer:
    """A trainer for testing on one device of ``trainer``'s accelerator, with its precision and progress bar."""
    device = trainer.strategy.root_device
    accelerator = {"cuda": "gpu", "mps": "mps"}.get(device.type, "cpu")
    devices: Any = [device.index or 0] if accelerator == "gpu" else 1
    callbacks: list = []
    bar = trainer.progress_bar_callback
    if isinstance(bar, RichProgressBar):
        callbacks.append(RichProgressBar())
    elif isinstance(bar, TQDMProgressBar):
        callbacks.append(TQDMProgressBar(refresh_rate=bar.refresh_rate))
    elif isinstance(bar, ProgressBar):
        callbacks.append(type(bar)())
    limit = trainer.limit_test_batches  # None for Lightning's default (all) keeps its "1.0 was configured" line away
    with without_device_lines():  # the fit named the devices already
        return Trainer(
            accelerator=accelerator,
            devices=devices,
            num_nodes=1,
            strategy="auto",
            precision=trainer.precision,
            logger=logger,
            callbacks=callbacks,
            enable_progress_bar=bool(callbacks),
            enable_checkpointing=False,
            enable_model_summary=False,
            default_root_dir=trainer.default_root_dir,
            fast_dev_run=trainer.fast_dev_run,
            limit_test_batches=None if isinstance(limit, float) and limit == 1.0 else limit,
        )


def run_final_tests(trainer: Trainer, module: CrystalRegressor, datamodule: LightningDataModule | None) -> dict:
    """Test the final module and the best-val checkpoint on one device; write ``results.json``, predictions and figures.

    Returns ``test/mae``, and with a best checkpoint ``test_best/mae`` and ``best_val/mae``, whose test runs without
    the run's loggers (its rebuilt hyperparameters must not be logged over the run's)."""
    # under fast_dev_run Lightning swaps the loggers for a stand-in that writes nothing: so do the tests
    loggers = [] if trainer.fast_dev_run else list(trainer.loggers)
    tester = one_device_trainer(trainer, loggers or False)
    module.test_prefix = "test"
    results = tester.test(module, datamodule=datamodule, verbose=False)
    metrics: dict[str, Any] = dict(results[0]) if results else {}
    modules: dict[str, CrystalRegressor] = {"final": module}
    callback = trainer.checkpoint_callback
    best_path = getattr(callback, "best_model_path", "") if callback is not None else ""
    if best_path and Path(best_path).is_file():
        # a module built in Python around a network whose arguments could not be recorded needs it passed back
        extra = {"model": copy.deepcopy(module.model)} if module.hparams.get("model") is None else {}
        best = type(module).load_from_checkpoint(best_path, map_location="cpu", weights_only=True, **extra)
        best.eval_weights = "raw"
        best.test_prefix = "test_best"
        results = one_device_trainer(trainer).test(best, datamodule=datamodule, verbose=False)
        best_metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
        for logger in loggers:
            logger.log_metrics({**best_metrics, "epoch": float(tester.current_epoch)}, step=tester.global_step)
            logger.save()
        metrics.update(best_metrics)
        modules["best"] = best
        metrics["best_val/mae"] = float(callback.best_model_score)
    directory = run_dir(trainer)
    run = RunDir(directory) if directory is not None else None
    write_results(run, trainer, module, metrics, modules)
    tested = f"the SWA average of {module.swa_steps} steps" if test_weights(module) == "swa" else "the raw weights"
    best = "; test_best/mae: the best-val checkpoint's raw weights" if "best" in modules else ""
    print(f"framer: tested weights: test/mae: {tested}{best}")
    if run is not None:
        from framer import plots  # matplotlib only when there is a run to draw

        plots.figures_of_run(run, title=f"{run.path.parent.name} {run.name}")
    print_metrics(metrics, run)
    return metrics


def write_results(
    run: RunDir | None,
    trainer: Trainer,
    module: CrystalRegressor,
    metrics: Mapping[str, Any],
    modules: Mapping[str, CrystalRegressor],
) -> None:
    """``results.json`` (metrics and facts of the run) and the test predictions of each tested module ("final",
    "best"), atomically; both also logged as MLflow artifacts of the run."""
    if run is None:
        return
    info = run.read_info()
    callback = trainer.checkpoint_callback
    summary: dict[str, Any] = {
        **{k: info[k] for k in ("dataset_name", "target", "target_units", "git_commit", "num_params") if k in info},
        "run_dir": str(run.path.resolve()),
        "epochs": finished_epochs(trainer),
        "global_step": trainer.global_step,
        "test_weights": test_weights(module),
        "swa_steps": module.swa_steps,
        "metrics": {k: float(v) for k, v in metrics.items()},
    }
    if callback is not None and getattr(callback, "best_model_path", ""):
        summary["best_checkpoint"] = callback.best_model_path
    if callback is not None and getattr(callback, "last_model_path", ""):
        summary["last_checkpoint"] = callback.last_model_path
    paths = []
    for which, tested in modules.items():
        if tested.test_predictions:
            paths.append(run.write_predictions(tested.test_predictions, which))
            summary["n_test" if which == "final" else f"n_test_{which}"] = len(tested.test_predictions)
    paths.append(run.write_results(summary))
    log_artifacts(trainer.loggers, paths)


def test_weights(module: CrystalRegressor) -> str:
    """ "swa" when ``test`` used the SWA average, else "raw"."""
    return "swa" if module.has_swa and module.eval_weights == "swa" else "raw"


def finished_epochs(trainer: Trainer) -> int:
    """Epochs trained to their end: Lightning's ``current_epoch`` also counts one a ``max_time``/``max_steps`` stop
    cut short, the global step does not (the same steps per epoch throughout the run assumed)."""
    batches = trainer.num_training_batches
    if not 0 < batches < math.inf:
        return trainer.current_epoch
    return min(trainer.current_epoch, trainer.global_step // math.ceil(batches / trainer.accumulate_grad_batches))


def print_metrics(metrics: Mapping[str, Any], run: RunDir | None) -> None:
    if not metrics:
        return
    text = ", ".join(f"{k} = {float(v):.6g}" for k, v in sorted(metrics.items()))
    where = f" (written to {run.results})" if run is not None else ""
    print(f"framer: {text}{where}")
