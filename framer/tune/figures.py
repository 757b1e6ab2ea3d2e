"""Figures of a study: Optuna's optimisation history and parameter importances (``<study-dir>/figures``)."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import optuna

log = logging.getLogger(__name__)


def study_figures(study: optuna.Study, out_dir: str | Path) -> dict[str, Path]:
    """``history.png`` and, once two completed trials differ, ``importance.png``; a figure that fails is skipped."""
    from optuna.visualization import matplotlib as ovm

    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
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
                fig.tight_layout()
                path = Path(out_dir) / f"{name}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                fig.savefig(path, dpi=120)
                plt.close(fig)
                paths[name] = path
        except (ValueError, RuntimeError, ZeroDivisionError) as err:
            log.warning("skipping study %s plot: %s", name, err)
    return paths
