"""Objectives: one trial = one LightningCLI config (base configs + fixed overrides + sampled values).

- :class:`InProcessObjective` (one device per trial): ``FramerCLI(args=[...], run=False)``, Optuna's
  ``PyTorchLightningPruningCallback`` on the monitored metric, ``trainer.fit``; returns the best epoch's value.
- :class:`SubprocessObjective` (``--devices-per-trial N``): writes ``trials/trial_<n>.yaml`` and runs
  ``python -m framer.cli fit --config <base>... --config conf/trainer/ddp.yaml --config trial_<n>.yaml`` as Lightning
  DDP over N devices; rank 0 reports to Optuna through :class:`framer.tune.callbacks.DDPTrialReporter`.

Either way the trial's run directory is ``<study-dir>/trials/trial_<n>/version_0`` and its MLflow run is a child of
the study's run. An invalid config or a crash fails the trial (state FAIL, message in the ``error`` user attribute)
and the study goes on.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
import yaml

from framer.launch import EXIT_SIGTERM, LOG_TAIL, RunSpec, Tail, bare_argv, config_path, run_subprocess
from framer.tune.callbacks import BestMetric
from framer.tune.mlflow_runs import RUN_ATTR, StudyTracker, artifact_root
from framer.tune.storage import WORKER_ATTR, worker_id
from framer.tune.sweep import Sweep, nested

DDP_TRAINER_CONFIG = Path(config_path("conf/trainer/ddp.yaml"))


class TrialError(RuntimeError):
    """A trial that could not run or produced no value."""


def trial_name(number: int) -> str:
    return f"trial_{number:04d}"


class Objective:
    """Shared set-up: the sweep, where trials write, and MLflow.

    Args:
        sweep: The parsed sweep file.
        study_dir: Directory of the study (trial run dirs go to ``<study_dir>/trials``).
        tracking_uri: MLflow backend, or None to disable MLflow.
    """

    def __init__(self, sweep: Sweep, study_dir: Path, tracking_uri: str | None) -> None:
        self.sweep = sweep
        self.study_dir = Path(study_dir)
        self.trials_dir = self.study_dir / "trials"
        self.tracking_uri = tracking_uri
        self.tracker = StudyTracker(tracking_uri, sweep.name) if tracking_uri else None

    def plumbing(self, study: optuna.Study, number: int) -> dict[str, Any]:
        """Overrides every trial gets: its run directory, MLflow experiment and tags."""
        values: dict[str, Any] = {
            "tracking.save_dir": str(self.trials_dir),
            "tracking.run_name": trial_name(number),
            "tracking.mlflow": self.tracker is not None,
        }
        if self.tracker is not None:
            values["tracking.experiment_name"] = self.sweep.name
            values["tracking.tracking_uri"] = self.tracking_uri
            values["tracking.tags"] = self.tracker.trial_tags(study, number)
            root = artifact_root(self.tracking_uri or "")
            if root:
                values["tracking.artifact_location"] = root
        return values

    def start(self, trial: optuna.Trial) -> dict[str, Any]:
        """Sample the trial's values and record which worker runs it."""
        trial.set_user_attr(WORKER_ATTR, worker_id())
        self.sweep.reseed(trial)
        return self.sweep.suggest(trial)

    def record_run(self, trial: optuna.Trial, run_dir: Path | None, run_id: str | None) -> None:
        if run_dir is not None:
            trial.set_user_attr("run_dir", str(run_dir.resolve()))
        if run_id:
            trial.set_user_attr(RUN_ATTR, run_id)

    def finished(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """Study callback: learning-curve figure and MLflow bookkeeping of the trial that just ended."""
        if self.tracker is None:
            return
        figures = {}
        run_dir = trial.user_attrs.get("run_dir")
        curves = Path(run_dir) / "metrics.csv" if run_dir else None
        if curves is not None and curves.is_file():
            from framer import plots

            try:
                figures["curves"] = plots.learning_curves(
                    curves, Path(run_dir) / "figures" / "learning_curves.png", f"{self.sweep.name} trial {trial.number}"
                )
            except Exception as err:  # a figure never fails a study
                print(f"framer.tune: no learning curves for trial {trial.number}: {err}", file=sys.stderr)
        self.tracker.finish_trial(study, trial, self.sweep.metric, figures)


class InProcessObjective(Objective):
    """Runs each trial in this process on one device (``trainer.devices=1``)."""

    def __call__(self, trial: optuna.Trial) -> float:
        from lightning.pytorch.loggers import MLFlowLogger
        from optuna_integration import PyTorchLightningPruningCallback

        from framer.cli import FramerCLI, run_dir
        from framer.tracking import find_logger

        values = self.start(trial)
        overrides = {**self.sweep.overrides(values), **self.plumbing(trial.study, trial.number)}
        overrides["trainer.devices"] = 1
        spec = RunSpec(self.sweep.configs, overrides, subcommand=None, quiet=True)
        cli = None
        try:
            stderr = Tail(sys.stderr)
            try:
                with contextlib.redirect_stderr(stderr), bare_argv():
                    cli = FramerCLI(args=spec.args(), run=False)
            except SystemExit as exit_:  # the CLI's parser reports invalid values by exiting
                message = stderr.text.strip() or f"the CLI exited with status {exit_.code}"
                trial.set_user_attr("error", message[-LOG_TAIL:])
                raise TrialError(message) from None
            trainer = cli.trainer
            mlflow_logger = find_logger(trainer.loggers, MLFlowLogger)
            self.record_run(trial, run_dir(trainer), mlflow_logger.run_id if mlflow_logger is not None else None)
            best = BestMetric(self.sweep.metric, self.sweep.direction)
            trainer.callbacks.extend([best, PyTorchLightningPruningCallback(trial, monitor=self.sweep.metric)])
            try:
                trainer.fit(cli.model, datamodule=cli.datamodule)
            except optuna.TrialPruned:
                raise
            except Exception as err:
                trial.set_user_attr("error", f"{type(err).__name__}: {err}"[-LOG_TAIL:])
                raise
            return _value(trial, best)
        finally:
            del cli
            gc.collect()


class SubprocessObjective(Objective):
    """Runs each trial as ``python -m framer.cli fit`` with Lightning DDP over ``devices`` devices.

    Args:
        devices: Devices (processes) per trial.
        storage_spec: The study's storage, reopened by rank 0 of the trial (see ``storage_spec``).
        ddp_config: Trainer config added after the base configs (default ``conf/trainer/ddp.yaml`` if present).
        python: Interpreter for the subprocess.
        timeout: Seconds after which a trial's processes are killed and the trial fails (None: no limit).
    """

    def __init__(
        self,
        sweep: Sweep,
        study_dir: Path,
        tracking_uri: str | None,
        devices: int,
        storage_spec: str,
        ddp_config: Path | None = None,
        python: str = sys.executable,
        timeout: float | None = None,
    ) -> None:
        super().__init__(sweep, study_dir, tracking_uri)
        self.devices = devices
        self.timeout = timeout
        self.storage_spec = storage_spec
        self.ddp_config = ddp_config if ddp_config is not None else DDP_TRAINER_CONFIG
        self.python = python

    def spec(self, trial: optuna.Trial, trial_yaml: Path, result_file: Path) -> RunSpec:
        """The trial's ``fit``: base configs, the DDP trainer config, the trial's values, rank 0's reporter."""
        reporter = {
            "class_path": "framer.tune.callbacks.DDPTrialReporter",
            "init_args": {
                "storage": self.storage_spec,
                "study_name": trial.study.study_name,
                "trial_id": trial._trial_id,
                "result_file": str(result_file.resolve()),
                "monitor": self.sweep.metric,
                "direction": self.sweep.direction,
                "pruner": self.sweep.pruner,
            },
        }
        overrides = self.plumbing(trial.study, trial.number)
        overrides.update({"trainer.devices": self.devices, "trainer.strategy": "ddp", "test_after_fit": False})
        overrides["trainer.callbacks+"] = json.dumps(reporter)  # appended to the configs' callbacks
        ddp = [str(self.ddp_config)] if self.ddp_config.is_file() else []
        return RunSpec([*self.sweep.configs, *ddp, str(trial_yaml)], overrides, quiet=True)

    def __call__(self, trial: optuna.Trial) -> float:
        values = self.start(trial)
        name = trial_name(trial.number)
        self.trials_dir.mkdir(parents=True, exist_ok=True)
        trial_yaml = self.trials_dir / f"{name}.yaml"
        result_file = self.trials_dir / f"{name}.result.json"
        log_file = self.trials_dir / f"{name}.log"
        header = f"# {self.sweep.name} trial {trial.number}: {json.dumps(values)}\n"
        trial_yaml.write_text(header + yaml.safe_dump(nested(self.sweep.overrides(values)), sort_keys=False))
        result_file.unlink(missing_ok=True)
        log_file.unlink(missing_ok=True)
        spec = self.spec(trial, trial_yaml, result_file)
        outcome = run_subprocess(spec, log_file, timeout=self.timeout, python=self.python)
        result = json.loads(result_file.read_text()) if result_file.is_file() else {}
        run_dir = Path(result["run_dir"]) if result.get("run_dir") else None
        info_file = run_dir / "run.json" if run_dir is not None else None
        run_info = json.loads(info_file.read_text()) if info_file is not None and info_file.is_file() else {}
        self.record_run(trial, run_dir, run_info.get("mlflow_run_id"))
        if outcome.interrupted:  # this worker got SIGTERM (passed on to the trial): stop as a killed worker does,
            raise SystemExit(EXIT_SIGTERM)  # leaving the trial RUNNING, to be requeued when the study resumes
        if not outcome.ok or not result:
            trial.set_user_attr("error", outcome.message[-LOG_TAIL:] or log_file.read_text()[-LOG_TAIL:])
            raise TrialError(f"trial {trial.number}: framer.cli exited with {outcome.code}; see {log_file}")
        if result.get("pruned"):
            raise optuna.TrialPruned(f"pruned at epoch {result.get('pruned_epoch')}")
        best = BestMetric(self.sweep.metric, self.sweep.direction)
        best.best, best.best_epoch, best.epochs = float(result["best"]), result["best_epoch"], result["epochs"]
        return _value(trial, best)


def _value(trial: optuna.Trial, best: BestMetric) -> float:
    if not math.isfinite(best.best):
        message = f"no finite {best.monitor} was logged"
        trial.set_user_attr("error", message)
        raise TrialError(message)
    trial.set_user_attr("best_epoch", best.best_epoch)
    trial.set_user_attr("epochs", best.epochs)
    return best.best


def overrides_of(sweep: Sweep, params: Mapping[str, Any]) -> dict[str, Any]:
    """The experiment overrides (fixed + values) of a trial's Optuna params."""
    return sweep.overrides(sweep.values_by_path(params))
