"""The sweep file (``sweeps/<study>.yaml``): base configs, search space keyed by config path, budget, sampler, pruner.

Example::

    study: lr                       # study name (default: the file's stem)
    configs: [conf/default.yaml, conf/debug/smoke.yaml]   # base LightningCLI configs, in order
    fixed: {trainer.max_epochs: 20} # overrides applied to every trial
    search_space:                   # config path -> distribution
      model.init_args.optimizer.init_args.lr: {type: float, low: 1.0e-4, high: 3.0e-3, log: true}
      model.init_args.model.init_args.frame: {type: categorical, choices: [max, pca]}
      data.init_args.batch_size: {type: int, low: 16, high: 128, step: 16}
    metric: val/mae                 # monitored and optimised (the best epoch's value)
    direction: minimize
    n_trials: 20                    # total over all workers (MaxTrialsCallback)
    sampler: {type: tpe, seed: 0}   # tpe | random | grid | qmc | cmaes (+ their keyword arguments)
    pruner: {type: median, n_startup_trials: 3, n_warmup_steps: 2}  # median | percentile | hyperband |
                                                                     # successive_halving | threshold | none

Parameter names in Optuna and MLflow are the config paths unless a distribution gives ``name:``. The study name is
also a directory name (``sweeps/<study>``): letters, digits, ``_``, ``-``, ``.``, ``+``, ``=``, ``@`` and spaces,
starting with a letter, digit or ``_`` (no path separators, so a sweep file cannot write outside the study root).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml

from framer.launch import config_path

DIST_TYPES = ("float", "int", "categorical")
SAMPLERS = {
    "tpe": "TPESampler",
    "random": "RandomSampler",
    "grid": "GridSampler",
    "qmc": "QMCSampler",
    "cmaes": "CmaEsSampler",
}
STUDY_NAME = re.compile(r"\w[\w .+=@-]{0,127}")  # \w: Unicode letters and digits, and _
RESEEDED = ("tpe", "random")  # samplers whose random draws are re-seeded per trial
PRUNERS = {
    "median": "MedianPruner",
    "percentile": "PercentilePruner",
    "hyperband": "HyperbandPruner",
    "successive_halving": "SuccessiveHalvingPruner",
    "threshold": "ThresholdPruner",
    "none": "NopPruner",
}


class SweepError(ValueError):
    """An invalid sweep file."""


@dataclass(frozen=True)
class Param:
    """One searched config path and its distribution."""

    path: str
    name: str
    distribution: optuna.distributions.BaseDistribution


@dataclass
class Sweep:
    """A parsed sweep file."""

    name: str
    configs: list[str]
    params: list[Param]
    fixed: dict[str, Any] = field(default_factory=dict)
    metric: str = "val/mae"
    direction: str = "minimize"
    n_trials: int = 10
    sampler: dict[str, Any] = field(default_factory=lambda: {"type": "tpe", "seed": 0})
    pruner: dict[str, Any] = field(default_factory=lambda: {"type": "median"})
    source: Path | None = None

    def __post_init__(self) -> None:
        if not STUDY_NAME.fullmatch(self.name):
            raise SweepError(
                f"{self.source or 'sweep'}: study name {self.name!r} is not a plain name (letters, digits, _ - . + = @ "
                "and spaces, at most 128 characters, no path separators or '..'): it names the study's directory"
            )

    # ------------------------------------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path) -> Sweep:
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise SweepError(f"{path}: not valid YAML ({err})") from err
        if not isinstance(raw, dict):
            raise SweepError(f"{path}: expected a mapping at the top level")
        return cls.from_dict(raw, default_name=path.stem, source=path)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], default_name: str = "study", source: Path | None = None) -> Sweep:
        where = str(source or "sweep")
        known = {"study", "description", "configs", "fixed", "search_space", "metric", "direction", "n_trials"}
        known |= {"sampler", "pruner"}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise SweepError(f"{where}: unknown keys {unknown}; allowed: {sorted(known)}")
        configs = raw.get("configs") or []
        if isinstance(configs, str):
            configs = [configs]
        if not configs:
            raise SweepError(f"{where}: 'configs' must list at least one base config")
        space = raw.get("search_space") or {}
        if not isinstance(space, Mapping) or not space:
            raise SweepError(f"{where}: 'search_space' must map config paths to distributions")
        params = [parse_param(p, spec, where) for p, spec in space.items()]
        names = [p.name for p in params]
        if len(set(names)) != len(names):
            raise SweepError(f"{where}: duplicate parameter names {names}")
        direction = str(raw.get("direction", "minimize"))
        if direction not in ("minimize", "maximize"):
            raise SweepError(f"{where}: direction must be minimize or maximize, got {direction!r}")
        n_trials = raw.get("n_trials", 10)
        if not isinstance(n_trials, int) or n_trials < 1:
            raise SweepError(f"{where}: n_trials must be a positive integer, got {n_trials!r}")
        sweep = cls(
            name=str(raw.get("study") or default_name),
            configs=[config_path(str(c)) for c in configs],
            params=params,
            fixed=dict(raw.get("fixed") or {}),
            metric=str(raw.get("metric", "val/mae")),
            direction=direction,
            n_trials=n_trials,
            sampler=dict(raw.get("sampler") or {"type": "tpe", "seed": 0}),
            pruner=dict(raw.get("pruner") or {"type": "median"}),
            source=source,
        )
        sweep.make_sampler()  # validate the keyword arguments now
        sweep.make_pruner()
        return sweep

    # ------------------------------------------------------------------------------------------------------------
    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """Sample every parameter; returns ``{config path: value}``."""
        return {p.path: suggest(trial, p.name, p.distribution) for p in self.params}

    def values_by_path(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Optuna ``trial.params`` (by name) -> ``{config path: value}``."""
        return {p.path: params[p.name] for p in self.params if p.name in params}

    def overrides(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Fixed overrides, then the trial's values, as ``{config path: value}``."""
        return {**self.fixed, **values}

    def grid(self) -> dict[str, list[Any]]:
        """The grid of a grid sampler: every parameter must be categorical."""
        for p in self.params:
            if not isinstance(p.distribution, optuna.distributions.CategoricalDistribution):
                raise SweepError(f"grid sampler: parameter {p.name!r} must be categorical")
        return {p.name: list(p.distribution.choices) for p in self.params}

    def grid_size(self) -> int:
        return math.prod(len(v) for v in self.grid().values())

    def make_sampler(self, trial_number: int | None = None) -> optuna.samplers.BaseSampler:
        """The sweep's sampler. With ``trial_number``, TPE and random samplers are seeded ``seed + trial_number``:
        workers started together then draw different points, and a study stays reproducible trial by trial."""
        kwargs = {k: v for k, v in self.sampler.items() if k != "type"}
        kind = self.sampler.get("type", "tpe")
        if kind not in SAMPLERS:
            raise SweepError(f"{self.source or 'sweep'}: sampler type must be one of {sorted(SAMPLERS)}")
        if trial_number is not None and kind in RESEEDED and kwargs.get("seed") is not None:
            kwargs["seed"] = int(kwargs["seed"]) + trial_number
        cls = getattr(optuna.samplers, SAMPLERS[kind])
        try:
            if kind == "grid":
                return cls(self.grid(), **kwargs)
            return cls(**kwargs)
        except TypeError as err:
            raise SweepError(f"sampler {kind}: {err}") from err

    def reseed(self, trial: optuna.Trial) -> None:
        """Give ``trial`` its own sampler seed (before its first suggestion; see :meth:`make_sampler`)."""
        if self.sampler.get("type", "tpe") in RESEEDED and self.sampler.get("seed") is not None:
            trial.study.sampler = self.make_sampler(trial.number)

    def make_pruner(self) -> optuna.pruners.BasePruner:
        """``{type: median|percentile|hyperband|successive_halving|threshold|none, **kwargs}`` -> a pruner."""
        spec = dict(self.pruner or {"type": "none"})
        kind = spec.pop("type", "median")
        if kind not in PRUNERS:
            raise SweepError(f"pruner type must be one of {sorted(PRUNERS)}, got {kind!r}")
        try:
            return getattr(optuna.pruners, PRUNERS[kind])(**spec)
        except TypeError as err:
            raise SweepError(f"pruner {kind}: {err}") from err


def parse_param(path: str, spec: Any, where: str = "sweep") -> Param:
    """``{type: float|int|categorical, ...}`` -> an Optuna distribution."""
    if isinstance(spec, list):  # shorthand: a list of choices
        spec = {"type": "categorical", "choices": spec}
    if not isinstance(spec, Mapping) or spec.get("type") not in DIST_TYPES:
        raise SweepError(f"{where}: {path}: expected {{type: float|int|categorical, ...}}, got {spec!r}")
    kind = spec["type"]
    name = str(spec.get("name", path))
    extra = sorted(set(spec) - {"type", "name", "low", "high", "log", "step", "choices"})
    if extra:
        raise SweepError(f"{where}: {path}: unknown keys {extra}")
    try:
        if kind == "categorical":
            choices = spec.get("choices")
            if not isinstance(choices, list) or not choices:
                raise SweepError(f"{where}: {path}: categorical needs a non-empty 'choices' list")
            dist: optuna.distributions.BaseDistribution = optuna.distributions.CategoricalDistribution(choices)
        elif kind == "float":
            dist = optuna.distributions.FloatDistribution(
                float(spec["low"]), float(spec["high"]), log=bool(spec.get("log", False)), step=spec.get("step")
            )
        else:
            dist = optuna.distributions.IntDistribution(
                int(spec["low"]), int(spec["high"]), log=bool(spec.get("log", False)), step=int(spec.get("step", 1))
            )
    except KeyError as err:
        raise SweepError(f"{where}: {path}: {kind} needs {err.args[0]!r}") from err
    except ValueError as err:
        raise SweepError(f"{where}: {path}: {err}") from err
    return Param(path, name, dist)


def suggest(trial: optuna.Trial, name: str, dist: optuna.distributions.BaseDistribution) -> Any:
    """``trial.suggest_*`` for a distribution object."""
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    if isinstance(dist, optuna.distributions.FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, log=dist.log, step=dist.step)
    return trial.suggest_int(name, dist.low, dist.high, log=dist.log, step=dist.step)  # IntDistribution


def nested(values: Mapping[str, Any]) -> dict[str, Any]:
    """``{"a.b.c": 1}`` -> ``{"a": {"b": {"c": 1}}}`` (for a trial's YAML config)."""
    out: dict[str, Any] = {}
    for path, value in values.items():
        node = out
        parts = path.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise SweepError(f"config path {path!r} conflicts with another override")
        node[parts[-1]] = value
    return out
