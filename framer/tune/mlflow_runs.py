"""MLflow layout of a study: one experiment named after the study, a parent run ``study`` and one child run per trial.

The trial's Lightning ``MLFlowLogger`` creates the trial's run (the parent and Optuna tags are passed through
``tracking.tags``), so its curves, ``config.yaml`` and ``run.json`` land in that run; when the trial ends this module
adds the Optuna parameters, the objective value, the trial state and a learning-curve figure. A trial that failed
before Lightning started (an invalid config value) still gets a run, created here, with status FAILED.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from framer.tracking import artifact_location, param_key, sqlite_lock
from framer.tune.storage import best_trial

log = logging.getLogger(__name__)
PARENT_ATTR = "mlflow_parent_run_id"
RUN_ATTR = "mlflow_run_id"
STATUS = {TrialState.COMPLETE: "FINISHED", TrialState.PRUNED: "KILLED", TrialState.FAIL: "FAILED"}


class StudyTracker:
    """MLflow bookkeeping of one study in the experiment ``study_name`` (every call is best effort: tracking never
    fails a trial)."""

    def __init__(self, tracking_uri: str, study_name: str) -> None:
        from mlflow.tracking import MlflowClient

        root = artifact_location(tracking_uri)
        with sqlite_lock(tracking_uri):  # workers starting together must not migrate a new database twice
            self.client = MlflowClient(tracking_uri=tracking_uri)
            experiment = self.client.get_experiment_by_name(study_name)
            if experiment is None:
                self.experiment_id = self.client.create_experiment(study_name, f"{root}/{study_name}" if root else None)
            else:
                self.experiment_id = experiment.experiment_id

    # ------------------------------------------------------------------------------------------------------------
    def parent_run(self, study: optuna.Study) -> str:
        """The study's parent run id (created once and stored in the study's user attributes)."""
        run_id = study.user_attrs.get(PARENT_ATTR)
        if run_id:
            return str(run_id)
        run = self.client.create_run(self.experiment_id, run_name="study", tags={"framer.role": "study"})
        study.set_user_attr(PARENT_ATTR, run.info.run_id)
        winner = str(study.user_attrs[PARENT_ATTR])  # re-read from the storage: the last worker to write wins
        if winner != run.info.run_id:  # another worker raced us: keep theirs
            self.client.delete_run(run.info.run_id)
        return winner

    def trial_tags(self, study: optuna.Study, number: int) -> dict[str, str]:
        """Tags for the trial's run (passed to the trial's MLFlowLogger through ``tracking.tags``)."""
        return {
            "mlflow.parentRunId": self.parent_run(study),
            "optuna.study": study.study_name,
            "optuna.trial": str(number),
            "framer.role": "trial",
        }

    def finish_trial(self, study: optuna.Study, trial: FrozenTrial, metric: str, figures: dict | None = None) -> None:
        """Add Optuna's view of a finished trial to its run (creating the run if Lightning never did)."""
        try:
            run_id = trial.user_attrs.get(RUN_ATTR)
            if not run_id:
                tags = self.trial_tags(study, trial.number)
                run_id = self.client.create_run(self.experiment_id, run_name=f"trial_{trial.number:04d}", tags=tags)
                run_id = run_id.info.run_id
            for name, value in trial.params.items():
                self._param(run_id, name, value)
            if trial.value is not None and math.isfinite(trial.value):
                self.client.log_metric(run_id, f"optuna/best_{metric}", float(trial.value))
            for step, value in sorted(trial.intermediate_values.items()):
                self.client.log_metric(run_id, f"optuna/{metric}", float(value), step=int(step))
            self.client.set_tag(run_id, "optuna.state", trial.state.name)
            error = trial.user_attrs.get("error")
            if error:
                self.client.set_tag(run_id, "optuna.error", str(error)[:4000])
            for path in (figures or {}).values():
                self.client.log_artifact(run_id, str(path), artifact_path="figures")
            self.client.set_terminated(run_id, STATUS.get(trial.state, "FAILED"))
        except Exception as err:  # tracking must not stop the study
            log.warning("MLflow bookkeeping of trial %d failed: %s", trial.number, err)

    def finish_study(self, study: optuna.Study, paths: dict[str, Path], metric: str) -> None:
        """Log the study's figures, best config and trial table to the parent run."""
        try:
            run_id = self.parent_run(study)
            for path in paths.values():  # every one written by framer.tune.runner.write_outputs
                self.client.log_artifact(run_id, str(path))
            best = best_trial(study)
            if best is not None:
                self.client.log_metric(run_id, f"best_{metric}", float(best.value))
                self.client.set_tag(run_id, "best_trial", str(best.number))
                for name, value in best.params.items():
                    self._param(run_id, name, value)
            self.client.set_terminated(run_id, "FINISHED")
        except Exception as err:
            log.warning("MLflow bookkeeping of study %s failed: %s", study.study_name, err)

    def _param(self, run_id: str, name: str, value: Any) -> None:
        try:
            self.client.log_param(run_id, param_key(name), str(value))
        except Exception as err:  # same key with another value (e.g. re-logging the best params)
            log.debug("param %s not logged: %s", name, err)
