"""Run (or resume) a study and write its outputs: ``best.yaml``, ``trials.csv``, ``summary.json``, ``figures/``.

The output files are written atomically (a worker killed while writing leaves the previous version).
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from framer.io import atomic_write_text
from framer.launch import resolved_config
from framer.rundir import FIGURES
from framer.tracking import resolve_tracking_uri
from framer.tune.objective import InProcessObjective, Objective, SubprocessObjective
from framer.tune.storage import best_trial, open_storage, recover_dead_trials, retry_of, storage_spec
from framer.tune.sweep import Sweep

COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)


class TrialBudget:
    """Optuna's ``MaxTrialsCallback`` over every worker of the study: stops once ``n_trials`` trials are finished
    or running (``COUNTED``). A trial failed because its worker died does not count once it is requeued (its repeat
    does)."""

    def __init__(self, n_trials: int) -> None:
        self.n_trials = n_trials

    def used(self, study: optuna.Study) -> int:
        every = study.get_trials(deepcopy=False)
        retried = {retry_of(t) for t in every} - {None}
        return sum(1 for t in every if t.state in COUNTED and t.number not in retried)

    def remaining(self, study: optuna.Study) -> int:
        return max(self.n_trials - self.used(study), 0)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if self.used(study) >= self.n_trials:
            study.stop()


def default_study_dir(sweep: Sweep) -> Path:
    return Path("sweeps") / sweep.name


def create_study(sweep: Sweep, spec: str) -> optuna.Study:
    return optuna.create_study(
        study_name=sweep.name,
        storage=open_storage(spec),
        sampler=sweep.make_sampler(),
        pruner=sweep.make_pruner(),
        direction=sweep.direction,
        load_if_exists=True,
    )


def tune(
    sweep_path: str | Path,
    storage: str | None = None,
    n_trials: int | None = None,
    devices_per_trial: int = 1,
    study_dir: str | Path | None = None,
    tracking_uri: str | None = None,
    mlflow: bool = True,
    figures: bool = True,
    trial_timeout: float | None = None,
) -> optuna.Study:
    """Run trials of the sweep until its total budget is used (or ``n_trials`` in this worker), then write outputs.
    Re-running resumes: finished trials are kept, trials of dead workers on this host are failed and requeued."""
    sweep = Sweep.load(sweep_path)
    if sweep.sampler.get("type") == "grid" and sweep.n_trials > sweep.grid_size():
        sweep.n_trials = sweep.grid_size()
    directory = Path(study_dir) if study_dir else default_study_dir(sweep)
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(sweep_path, directory / "sweep.yaml")
    spec = storage_spec(storage, directory)
    study = create_study(sweep, spec)
    recovered = recover_dead_trials(study)
    if recovered:
        print(f"framer.tune: requeued trials {recovered} of workers that died", file=sys.stderr)

    uri = resolve_tracking_uri(tracking_uri) if mlflow else None
    if devices_per_trial > 1:
        objective: Objective = SubprocessObjective(sweep, directory, uri, devices_per_trial, timeout=trial_timeout)
    else:
        objective = InProcessObjective(sweep, directory, uri)
    if objective.tracker is not None:  # the MLflow runs of trials whose worker died are FAILED, not RUNNING forever
        for number in recovered:
            objective.tracker.finish_trial(study, study.trials[number], sweep.metric)
    budget = TrialBudget(sweep.n_trials)
    print(f"framer.tune: study {sweep.name!r} in {spec}: {budget.used(study)}/{sweep.n_trials} trials used")
    if budget.remaining(study) > 0 and (n_trials is None or n_trials > 0):
        study.optimize(
            objective,
            n_trials=n_trials,
            callbacks=[objective.finished, budget],
            catch=(Exception,),
            gc_after_trial=True,
        )
    write_outputs(study, sweep, directory, objective, figures=figures)
    return study


def write_outputs(
    study: optuna.Study, sweep: Sweep, directory: Path, objective: Objective, figures: bool = True
) -> dict[str, Path]:
    """``trials.csv``, ``summary.json``, ``best.yaml`` (best trial's full config), ``figures/``; logged to MLflow."""
    paths: dict[str, Path] = {}
    trials = study.get_trials(deepcopy=False)
    if trials:
        paths["trials"] = directory / "trials.csv"
        atomic_write_text(paths["trials"], study.trials_dataframe().to_csv(index=False))
    best = best_trial(study)
    if best is not None:
        overrides = {**sweep.overrides(sweep.values_by_path(best.params)), "tracking.run_name": f"{sweep.name}_best"}
        header = (
            f"# Best trial {best.number} of study {sweep.name!r}: {sweep.metric} = {best.value:.6g}\n"
            f"# params: {json.dumps(best.params)}\n"
            f"# Re-run: python -m framer.cli fit --config {directory / 'best.yaml'}\n"
        )
        try:
            text = resolved_config(sweep.configs, overrides)
            paths["best"] = atomic_write_text(directory / "best.yaml", header + text)
        except RuntimeError as err:
            print(f"framer.tune: best.yaml not written: {err}", file=sys.stderr)
    summary = {
        "study": sweep.name,
        "metric": sweep.metric,
        "direction": sweep.direction,
        "n_trials": sweep.n_trials,
        "states": dict(Counter(t.state.name for t in trials)),
        "best": None
        if best is None
        else {
            "number": best.number,
            "value": best.value if best.value is not None and math.isfinite(best.value) else None,
            "params": best.params,
            "run_dir": best.user_attrs.get("run_dir"),
        },
    }
    paths["summary"] = atomic_write_text(directory / "summary.json", json.dumps(summary, indent=2) + "\n")
    if figures and trials:
        paths.update(study_figures(study, directory / FIGURES))
    if objective.tracker is not None:
        objective.tracker.finish_study(study, paths, sweep.metric)
    return paths


def study_figures(study: optuna.Study, out_dir: str | Path) -> dict[str, Path]:
    """``history.png`` and, once two completed trials differ, ``importance.png``; a figure that fails is skipped."""
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    from framer.plots import save_figure  # also selects matplotlib's Agg backend

    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    plots = {"history": ovm.plot_optimization_history}
    if len(complete) >= 2 and len({str(t.params) for t in complete}) >= 2:
        plots["importance"] = ovm.plot_param_importances
    paths: dict[str, Path] = {}
    for name, plot in plots.items():
        try:
            with warnings.catch_warnings(), plt.style.context("default"):  # optuna switches to ggplot globally
                warnings.simplefilter("ignore")  # ExperimentalWarning from optuna.visualization.matplotlib
                fig = np.ravel(plot(study))[0].figure
                fig.set_size_inches(7, 4.5)
                paths[name] = save_figure(fig, Path(out_dir) / f"{name}.png")
        except (ValueError, RuntimeError, ZeroDivisionError) as err:
            print(f"framer.tune: no study {name} figure: {err}", file=sys.stderr)
    return paths
