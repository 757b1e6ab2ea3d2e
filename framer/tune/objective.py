"""Objectives: one trial = one LightningCLI ``fit`` (base configs + fixed overrides + sampled values), started
through :mod:`framer.launch`.

- :class:`InProcessObjective` (one device per trial): :func:`framer.launch.run_inprocess` with Optuna's
  ``PyTorchLightningPruningCallback`` on the sweep's metric; the value is the best epoch's, as the run's
  ``ModelCheckpoint`` (monitoring that metric) recorded it.
- :class:`SubprocessObjective` (``--devices-per-trial N``): writes ``trials/trial_<n>.yaml`` and runs
  ``python -m framer.cli fit --config <base>... --config conf/trainer/ddp.yaml --config trial_<n>.yaml`` as Lightning
  DDP over N devices (:func:`framer.launch.run_subprocess`). Rank 0 appends each epoch's value to
  ``trials/trial_<n>.progress.jsonl``; this process reads it while the trial runs, reports to Optuna and, when the
  pruner says so, stops the trial's processes (SIGTERM) within one poll interval. The value is the best reported one.

Either way the trial's run directory is ``<study-dir>/trials/trial_<n>/version_0`` and its MLflow run is a child of
the study's run. An invalid config or a crash fails the trial (state FAIL, message in the ``error`` user attribute)
and the study goes on. A trial stopped by SIGTERM (the worker was pre-empted) stops the worker with exit code 143
and stays RUNNING, so the study's next start fails and requeues it.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import optuna
import yaml

from framer.launch import EXIT_SIGTERM, LOG_TAIL, REPO, Outcome, RunSpec, run_inprocess, run_subprocess
from framer.rundir import RunDir
from framer.tune.callbacks import TrialRun
from framer.tune.mlflow_runs import RUN_ATTR, StudyTracker
from framer.tune.storage import WORKER_ATTR, worker_id
from framer.tune.sweep import Sweep, nested

DDP_TRAINER_CONFIG = REPO / "conf" / "trainer" / "ddp.yaml"  # not relative to the directory at import time
RUN_DIR_ATTR = "run_dir"


class TrialError(RuntimeError):
    """A trial that could not run or produced no value."""


def trial_name(number: int) -> str:
    return f"trial_{number:04d}"


class Objective:
    """Shared set-up: the sweep, where trials write (``<study_dir>/trials``), and MLflow (none without
    ``tracking_uri``)."""

    def __init__(self, sweep: Sweep, study_dir: Path, tracking_uri: str | None) -> None:
        self.sweep = sweep
        self.trials_dir = Path(study_dir) / "trials"
        self.tracking_uri = tracking_uri
        self.tracker = StudyTracker(tracking_uri, sweep.name) if tracking_uri else None

    def plumbing(self, study: optuna.Study, number: int) -> dict[str, Any]:
        """Overrides every trial gets: its run directory, MLflow experiment and tags, no test after fit, and a best
        checkpoint chosen by the sweep's metric."""
        values: dict[str, Any] = {
            "tracking.save_dir": str(self.trials_dir),
            "tracking.run_name": trial_name(number),
            "tracking.mlflow": self.tracker is not None,
            "test_after_fit": False,
            "checkpoint.monitor": self.sweep.metric,
            "checkpoint.mode": "min" if self.sweep.direction == "minimize" else "max",
        }
        if self.tracker is not None:
            values["tracking.experiment_name"] = self.sweep.name
            values["tracking.tracking_uri"] = self.tracking_uri
            values["tracking.tags"] = self.tracker.trial_tags(study, number)
        return values

    def start(self, trial: optuna.Trial) -> dict[str, Any]:
        """Record which worker runs the trial, then sample its values (a requeued trial has its parameters already,
        and its predecessor's run in a copy of its user attributes, which is cleared)."""
        trial.set_user_attr(WORKER_ATTR, worker_id())
        for stale in (RUN_DIR_ATTR, RUN_ATTR):
            if trial.user_attrs.get(stale):
                trial.set_user_attr(stale, None)
        self.sweep.reseed(trial)
        return self.sweep.suggest(trial)

    def record_run(self, trial: optuna.Trial, run_dir: str | Path | None, run_id: str | None) -> None:
        if run_dir:
            trial.set_user_attr(RUN_DIR_ATTR, str(Path(run_dir).resolve()))
        if run_id:
            trial.set_user_attr(RUN_ATTR, run_id)

    def failed(self, trial: optuna.Trial, outcome: Outcome, log: Path | None = None) -> TrialError:
        """The trial's run ended with an error: stop the worker if it was pre-empted, else fail the trial."""
        if outcome.interrupted:  # SIGTERM (passed on to a subprocess trial): stop as a killed worker does,
            print(f"framer.tune: trial {trial.number} stopped by SIGTERM; rerun to requeue it", file=sys.stderr)
            raise SystemExit(EXIT_SIGTERM)  # leaving the trial RUNNING, to be requeued when the study resumes
        trial.set_user_attr("error", outcome.message[-LOG_TAIL:])
        where = f"; see {log}" if log is not None else ""
        return TrialError(f"trial {trial.number}: {outcome.message.splitlines()[0]}{where}")

    def finished(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """Study callback: learning-curve figure and MLflow bookkeeping of the trial that just ended."""
        if self.tracker is None:
            return
        figures = {}
        run_dir = trial.user_attrs.get(RUN_DIR_ATTR)
        if run_dir:
            from framer import plots

            try:
                figures = plots.run_figures(RunDir(run_dir), title=f"{self.sweep.name} trial {trial.number}")
            except Exception as err:  # a figure never fails a study
                print(f"framer.tune: no learning curves for trial {trial.number}: {err}", file=sys.stderr)
        self.tracker.finish_trial(study, trial, self.sweep.metric, figures)


class InProcessObjective(Objective):
    """Runs each trial in this process on one device (``trainer.devices=1``)."""

    def __call__(self, trial: optuna.Trial) -> float:
        from optuna_integration import PyTorchLightningPruningCallback

        values = self.start(trial)
        overrides = {**self.sweep.overrides(values), **self.plumbing(trial.study, trial.number), "trainer.devices": 1}
        run = TrialRun(self.sweep.metric, started=lambda run_dir, run_id: self.record_run(trial, run_dir, run_id))
        pruning = PyTorchLightningPruningCallback(trial, monitor=self.sweep.metric)
        outcome = run_inprocess(RunSpec(self.sweep.configs, overrides, quiet=True), callbacks=[run, pruning])
        if isinstance(run.exception, optuna.TrialPruned):
            raise run.exception
        if not outcome.ok:
            raise self.failed(trial, outcome)
        return _value(trial, run.best, self.sweep.metric)


class SubprocessObjective(Objective):
    """Runs each trial as a DDP ``fit`` subprocess over ``devices`` devices (see the module docstring); ``timeout``:
    seconds after which a trial's processes are killed and the trial fails (None: no limit)."""

    def __init__(
        self, sweep: Sweep, study_dir: Path, tracking_uri: str | None, devices: int, timeout: float | None = None
    ) -> None:
        super().__init__(sweep, study_dir, tracking_uri)
        self.devices = devices
        self.timeout = timeout

    def __call__(self, trial: optuna.Trial) -> float:
        values = self.start(trial)
        name = trial_name(trial.number)
        self.trials_dir.mkdir(parents=True, exist_ok=True)
        trial_yaml = self.trials_dir / f"{name}.yaml"
        progress = self.trials_dir / f"{name}.progress.jsonl"
        log_file = self.trials_dir / f"{name}.log"
        header = f"# {self.sweep.name} trial {trial.number}: {json.dumps(values)}\n"
        trial_yaml.write_text(header + yaml.safe_dump(nested(self.sweep.overrides(values)), sort_keys=False))
        progress.unlink(missing_ok=True)
        log_file.unlink(missing_ok=True)
        # the trial's fit: base configs, the DDP trainer config, the trial's values; rank 0 writes the progress file
        writer = {
            "class_path": "framer.tune.callbacks.TrialProgress",
            "init_args": {"path": str(progress.resolve()), "monitor": self.sweep.metric},
        }
        overrides = self.plumbing(trial.study, trial.number)
        overrides.update({"trainer.devices": self.devices, "trainer.strategy": "ddp"})
        overrides["trainer.callbacks+"] = json.dumps(writer)  # appended to the configs' callbacks
        ddp = [str(DDP_TRAINER_CONFIG)] if DDP_TRAINER_CONFIG.is_file() else []
        spec = RunSpec([*self.sweep.configs, *ddp, str(trial_yaml)], overrides, quiet=True)
        reporter = Reporter(self, trial, progress)
        outcome = run_subprocess(spec, log_file, timeout=self.timeout, poll=reporter.poll)
        reporter.poll()  # the lines written after the last poll
        if reporter.pruned_at is not None:
            raise optuna.TrialPruned(f"pruned at epoch {reporter.pruned_at}; its processes were stopped")
        if not outcome.ok:
            raise self.failed(trial, outcome, log_file)
        return _value(trial, reporter.best(), self.sweep.metric)


class Reporter:
    """The driver's side of a DDP trial: reads rank 0's progress file while the trial runs, records its run,
    reports each epoch to Optuna and asks the pruner (:meth:`poll`, the launcher's poll hook)."""

    def __init__(self, objective: Objective, trial: optuna.Trial, progress: Path) -> None:
        self.objective, self.trial = objective, trial
        self.progress, self.offset = progress, 0  # the bytes of the file read so far
        self.values: dict[int, float] = {}
        self.pruned_at: int | None = None

    def new_lines(self) -> list[dict[str, Any]]:
        """The progress file's complete lines not read before (a line still being written waits for the next call)."""
        if not self.progress.is_file():
            return []
        with self.progress.open("rb") as handle:
            handle.seek(self.offset)
            data = handle.read()
        end = data.rfind(b"\n") + 1
        self.offset += end
        return [json.loads(line) for line in data[:end].splitlines() if line.strip()]

    def poll(self) -> bool:
        """Take the new lines; True once the trial should stop (pruned)."""
        for record in self.new_lines():
            if self.pruned_at is not None:
                break
            if "run_dir" in record:
                self.objective.record_run(self.trial, record["run_dir"], record.get("mlflow_run_id"))
                continue
            epoch, value = int(record["epoch"]), float(record["value"])
            self.values[epoch] = value
            self.trial.report(value, step=epoch)
            if self.trial.should_prune():
                self.pruned_at = epoch
        return self.pruned_at is not None

    def best(self) -> float:
        pick = min if self.objective.sweep.direction == "minimize" else max
        return pick(self.values.values(), default=math.nan)


def _value(trial: optuna.Trial, best: float, metric: str) -> float:
    if not math.isfinite(best):
        message = f"no finite {metric} was logged"
        trial.set_user_attr("error", message)
        raise TrialError(message)
    return best
