"""Command line: ``python -m framer.cli fit|validate|test|predict --config conf/default.yaml [--config ...]``.

A LightningCLI with the model and the data as ``class_path``/``init_args`` subclasses, plus framer's groups:
``tracking`` (run directory and MLflow, :class:`framer.tracking.Tracking`), ``checkpoint`` (the always-on
``ModelCheckpoint``: best ``val/mae`` + ``last.ckpt``), ``threads`` (torch's CPU threads, recorded in ``run.json``),
``test_after_fit`` and ``predictions_csv``.

- ``fit`` refuses settings it cannot work with before anything is written (a learning rate the optimizer rejects,
  ``swa_epochs`` larger than ``max_epochs``), holds a lock on its run directory while it runs (:mod:`framer.rundir`),
  then tests on one device (:mod:`framer.evaluate`). ``--ckpt_path last`` resumes the newest run of the same
  ``tracking.run_name`` in place (same directory and MLflow run, earlier rows of ``metrics.csv`` kept), or starts
  afresh when there is none. Under ``fast_dev_run`` nothing is written.
- ``test``, ``validate`` and ``predict`` never change a trained run: they write CSV files only into a new
  ``<run dir>/<subcommand>/<n>/`` of the checkpoint's run (else of ``<save_dir>/<run_name>``).
- Without ``tracking.run_name`` a run is named ``<data set>-<target>-<model>`` (:func:`default_run_name`).
  ``trainer.limit_*_batches`` and ``overfit_batches`` written as integers count batches. Options are never
  abbreviated; an unknown one is named with the closest known one and the config file it sits in.

Exit codes are :mod:`framer.errors`'s. Config files and checkpoints are checked before jsonargparse or Lightning
sees them (:mod:`framer.checkpoints`, :mod:`framer.instantiate`): nothing in a corrupt or code-carrying file runs.
"""

from __future__ import annotations

import contextvars
import difflib
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from filelock import FileLock
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException

from framer.callbacks import PredictionWriter, safety_callbacks
from framer.checkpoints import AtomicCheckpointIO, check_checkpoint
from framer.data.sources import DataError
from framer.data.structures import InvalidStructureError
from framer.errors import UserError, exit_codes
from framer.evaluate import print_metrics, run_final_tests, write_results
from framer.instantiate import allowed_modules, check_config_class_paths, restrict_config_imports
from framer.module import CrystalRegressor
from framer.provenance import framer_version
from framer.rundir import RunDir, RunRoot
from framer.tracking import Tracking, is_launching_process, log_run_start, quiet_lightning_noise, run_dir

SPECIAL_CKPT_PATHS = ("last", "best", "hpc", "registry")
CONFIG_SUFFIXES = (".yaml", ".yml", ".json")
#: user errors (exit code 2) besides framer's own :class:`framer.errors.UserError`s
USER_ERRORS: tuple[type[BaseException], ...] = (InvalidStructureError, MisconfigurationException, DataError)
#: trainer settings where an int means batches and a float a fraction (jsonargparse would read ``1`` as ``1.0``)
BATCH_COUNTS = (*(f"limit_{stage}_batches" for stage in ("train", "val", "test", "predict")), "overfit_batches")
#: (source, parsed YAML, position in the arguments) of the config files and inline values being parsed
_CONFIGS: contextvars.ContextVar[Sequence[tuple[str, Any, int]]] = contextvars.ContextVar("framer_configs", default=())


def check_config_files(args: Any) -> list[tuple[str, Any, int]]:
    """Refuse config files and inline ``{...}``/``[...]`` values naming a class outside the allowed packages before
    jsonargparse imports anything (unparsable files are left to it); returns ``(source, data, position in args)``."""
    if not isinstance(args, Sequence) or isinstance(args, str):
        if isinstance(args, dict):
            check_config_class_paths(args, "the configuration")
        return []
    read = []
    for index, arg in enumerate(args):
        if not isinstance(arg, str):
            continue
        value = arg.split("=", 1)[1] if arg.startswith("-") and "=" in arg else arg
        if value.startswith(("{", "[")):
            source, text = "the command line", value
        elif value.lower().endswith(CONFIG_SUFFIXES) and Path(value).is_file():
            source, text = f"config {value}", None
        else:
            continue
        try:
            data = yaml.safe_load(text if text is not None else Path(value).read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue
        check_config_class_paths(data, source)
        read.append((source, data, index))
    return read


class FramerSaveConfigCallback(SaveConfigCallback):
    """Saves ``config.yaml`` in the run directory, then records it and the run's metadata (``run.json``, MLflow)."""

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        log_run_start(trainer, pl_module, trainer.datamodule)


class FramerArgumentParser(LightningArgumentParser):
    """Parser whose errors are one line (plus a pointer to ``--help``), with an unknown option's closest known one
    and config file named."""

    def error(self, message: str, ex: Exception | None = None) -> None:
        hint = "see `python -m framer.cli {fit,validate,test,predict} --help`"
        text = _parser_error_text(str(message))
        unknown = re.search(r"unrecognized arguments: --([\w.-]+)|option '([\w.-]+)'", str(message), re.IGNORECASE)
        if unknown:
            key = unknown.group(1) or unknown.group(2)
            source = next((src for src, data, _ in _CONFIGS.get() if _has_key(data, key.split("."))), None)
            text = f"{source}: {text}" if source else text
            parsers = getattr(self, "framer_parsers", None) or [self]  # the CLI's parsers; a nested one alone
            names = {name for parser in parsers for name, _ in parser.get_defaults().items()}
            names = names if "." in key else {name.rsplit(".", 1)[-1] for name in names}
            close = difflib.get_close_matches(key, sorted(names), n=1)
            text += f"; did you mean '{close[0]}'?" if close else ""
        sys.stderr.write(f"framer: error: {text}\n  ({hint})\n")
        raise SystemExit(2)


def _has_key(data: Any, path: list[str]) -> bool:
    """Whether the dotted key ``path`` appears anywhere in nested mappings (``angle_basiz`` at any depth)."""
    if not isinstance(data, Mapping):
        return False
    here = path[0] in data and (len(path) == 1 or _has_key(data[path[0]], path[1:]))
    return here or any(_has_key(value, path) for value in data.values())


def _parser_error_text(message: str) -> str:
    """One line from a jsonargparse error: the key, the value given and the types expected, when it says them."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    if not lines:
        return "invalid arguments"
    denied = re.search(r"Importing '([\w.]+)' is not allowed", message)
    if denied:  # jsonargparse's import policy (framer.instantiate.restrict_config_imports)
        return (
            f"{lines[0]} class path {denied.group(1)!r} was refused and not imported: only classes from "
            f"{', '.join(allowed_modules())} may be named (trusted packages can be added to $FRAMER_ALLOWED_MODULES)"
        )
    given = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("Given value:")), None)
    subtypes = next((line for line in lines if line.startswith("Subtypes:")), "")
    types = re.findall(r"<class '([\w.]+)'>", subtypes)
    if given is not None and types:
        return f"{lines[0]} invalid value {given!r} (expected {' or '.join(types)})"
    return " ".join(lines[:3])


class FramerCLI(LightningCLI):
    """LightningCLI for :class:`framer.module.CrystalRegressor` and framer's datamodules."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("model_class", CrystalRegressor)
        kwargs.setdefault("datamodule_class", LightningDataModule)
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("save_config_callback", FramerSaveConfigCallback)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("auto_configure_optimizers", False)
        kwargs.setdefault("parser_class", FramerArgumentParser)
        self._mlflow_run_id: str | None = None
        self._resume_step: int | None = None  # global step of the checkpoint a fit resumes from
        self._checkpoint_run: RunDir | None = None  # run directory of the checkpoint test/validate/predict evaluate
        self._run_lock: FileLock | None = None
        self._threads_before: int | None = None  # torch's threads before `threads` set them
        self._parsers: list[LightningArgumentParser] = []  # the main parser and the subcommands'
        self._batch_counts: dict[str, int] = {}  # trainer.limit_*_batches / overfit_batches given as integers
        #: test metrics of the run after fit (rank 0), e.g. {"test/mae": ..., "test_best/mae": ...}
        self.final_metrics: dict[str, float] = {}
        restrict_config_imports()
        quiet_lightning_noise()
        try:
            super().__init__(*args, **kwargs)
        finally:
            if self._run_lock is not None:
                self._run_lock.release()
            if self._threads_before is not None and kwargs.get("run", True):  # run=False: the caller fits next
                torch.set_num_threads(self._threads_before)

    def _section(self, config: Any) -> Any:
        """The part of a parsed config for the subcommand being run (all of it without one: ``run=False``)."""
        return config[self.subcommand] if self.subcommand else config

    # ---- parser
    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        kwargs.setdefault("dump_header", [f"framer {framer_version()} (python -m framer.cli)"])
        kwargs.setdefault("allow_abbrev", False)  # ``--trainer.max_epoch`` is a typo, not ``max_epochs``
        parser = super().init_parser(**kwargs)
        self._parsers.append(parser)
        parser.framer_parsers = self._parsers  # where an unknown option's error looks for the closest known one
        return parser

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_class_arguments(Tracking, "tracking")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/mae",
                "checkpoint.mode": "min",
                "checkpoint.save_top_k": 1,
                "checkpoint.save_last": True,
                "checkpoint.filename": "best-epoch{epoch:04d}-step{step:07d}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        parser.add_argument(
            "--threads",
            type=int,
            default=0,
            help="torch CPU threads of this run (torch.set_num_threads before anything is built; 0: torch's "
            "default), recorded in run.json",
        )
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=True,
            help="fit: then test on one device the SWA model (test/mae) and the best val/mae checkpoint "
            "(test_best/mae), writing results.json and predictions.csv into the run directory",
        )
        parser.add_argument(
            "--predictions_csv",
            type=str | None,
            default=None,
            help="predict: the CSV to write (id, prediction); default <run dir>/predict/<n>/predictions.csv",
        )

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        given = sys.argv[1:] if args is None else args
        configs = check_config_files(given)
        token = _CONFIGS.set(configs)
        try:
            super().parse_arguments(parser, args)
        finally:
            _CONFIGS.reset(token)
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else self.config
        counts = _given_batch_counts(given, configs).items()
        self._batch_counts = {k: v for k, v in counts if isinstance(v, int) and not isinstance(v, bool)}
        for key, value in self._batch_counts.items():  # batches, not a fraction (also in config.yaml)
            config.trainer[key] = value
        if config.get("tracking") is not None and config.tracking.run_name is None:
            config.tracking.run_name = default_run_name(config)
        if subcommand:
            self._resolve_ckpt_path(subcommand, config)

    def _resolve_ckpt_path(self, subcommand: str, config: Any) -> None:
        """Find ``last``, then check the checkpoint (any spelling) before Lightning or jsonargparse reads it."""
        ckpt = config.get("ckpt_path")
        if not ckpt:
            return
        if "weights_only" in config:
            config.weights_only = True  # framer's checkpoints are plain data; nothing else is unpickled
        if ckpt == "last" and config.trainer.get("logger") in (None, True):
            root = RunRoot(Path(config.tracking.save_dir) / config.tracking.run_name)
            found = root.last_checkpoint()
            if found is None:
                if subcommand != "fit":
                    raise UserError(f"no last checkpoint under {root.path}")
                print(f"framer: no last checkpoint under {root.path}; training from scratch", file=sys.stderr)
                config.ckpt_path = None
                return
            path, run = found
            ckpt = config.ckpt_path = str(path)
            if subcommand == "fit":  # continue in the same run directory and MLflow run
                config.tracking.version = run.name
                self._mlflow_run_id = run.read_info().get("mlflow_run_id")
        elif ckpt in SPECIAL_CKPT_PATHS:
            # resolved by Lightning itself and read through AtomicCheckpointIO (weights_only); no class is built
            return
        checkpoint = check_checkpoint(ckpt, self._model_class)
        if subcommand == "fit":
            self._resume_step = int(checkpoint.get("global_step") or 0)
        else:
            self._checkpoint_run = RunDir.of_checkpoint(ckpt)

    def before_instantiate_classes(self) -> None:
        threads = self._section(self.config).get("threads") or 0
        if threads < 0:
            raise UserError(f"threads must be 0 (torch's default) or a positive number of threads, not {threads}")
        if threads:
            self._threads_before = torch.get_num_threads()
            torch.set_num_threads(threads)

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except ValueError as err:  # a constructor rejected a config value: say which, in one line
            raise UserError(f"invalid configuration: {_constructor_errors(err)}") from err

    # ---- trainer: loggers from `tracking` unless trainer.logger is given
    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer_config = self._section(self.config_init).get("trainer") or {}
        subcommand = self.subcommand or "fit"  # run=False (framer.tune) builds trainers that fit
        if subcommand == "fit":
            self._check_settings(trainer_config)
        if trainer_config.get("enable_progress_bar") is False and trainer_config.get("callbacks"):
            # `--trainer.enable_progress_bar false` wins over the progress bar of the configs (sweeps, batch jobs)
            trainer_config["callbacks"] = [c for c in trainer_config["callbacks"] if not isinstance(c, ProgressBar)]
        plugins = kwargs.get("plugins", trainer_config.get("plugins"))
        plugins = [] if plugins is None else list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):  # atomic, fsynced checkpoint files
            kwargs["plugins"] = [*plugins, AtomicCheckpointIO()]
        for key, value in self._batch_counts.items():  # jsonargparse instantiates 1 as 1.0 (all batches)
            kwargs.setdefault(key, value)
        tracking: Tracking = self._section(self.config_init)["tracking"]
        try:
            if trainer_config.get("logger") in (None, True) and "logger" not in kwargs:
                kwargs["logger"] = self._default_loggers(subcommand, trainer_config, tracking)
            trainer = super().instantiate_trainer(**kwargs)
        except BaseException:
            tracking.fail_created_run()  # a trainer setting Lightning refuses: no MLflow run left RUNNING
            raise
        if trainer.fast_dev_run:  # Lightning means to save nothing then, but ModelCheckpoint still saves last.ckpt
            trainer.callbacks[:] = [c for c in trainer.callbacks if not isinstance(c, ModelCheckpoint)]
        trainer.callbacks.extend(safety_callbacks())
        return trainer

    def _default_loggers(self, subcommand: str, trainer_config: dict, tracking: Tracking) -> list[Logger] | bool:
        """Loggers from ``tracking``: the run's for ``fit`` (its directory locked), new files for the others."""
        if trainer_config.get("fast_dev_run"):
            return False  # a smoke run writes no files (Lightning would log nothing either)
        if subcommand != "fit":  # test/validate/predict: a new <run>/<subcommand>/<n>/, CSV files only
            run = self._checkpoint_run or RunDir(Path(tracking.save_dir) / tracking.run_name)
            version = run.new_evaluation_dir(subcommand).name if is_launching_process() else None
            return [CSVLogger(save_dir=run.path, name=subcommand, version=version)]
        loggers = tracking.loggers(mlflow_run_id=self._mlflow_run_id, resume_step=self._resume_step)
        if self.subcommand == "fit" and is_launching_process():
            if self._resume_step is None:  # a new run's CSV writer checks its directory is empty before the lock file
                _ = loggers[0].experiment  # goes in (a resumed run's writer rewrites metrics.csv: only under the lock)
            self._run_lock = RunDir(loggers[0].log_dir).lock()
        return loggers

    def _check_settings(self, trainer_config: dict) -> None:
        """Refuse settings ``fit`` cannot work with before anything is written: the optimizer and scheduler are built
        once (and dropped), so a learning rate torch rejects is reported now, and ``swa_epochs > max_epochs``."""
        if type(self.model).configure_optimizers is CrystalRegressor.configure_optimizers:  # needs no trainer
            self.model.configure_optimizers()
        swa_epochs = getattr(self.model, "swa_epochs", None)
        max_epochs = trainer_config.get("max_epochs")
        if trainer_config.get("fast_dev_run") or not isinstance(swa_epochs, int) or max_epochs in (None, -1):
            return
        if swa_epochs > max_epochs:
            raise UserError(
                f"model.init_args.swa_epochs ({swa_epochs}) is larger than trainer.max_epochs ({max_epochs}): weights "
                f"would be averaged from the first step with the learning rate frozen; set swa_epochs to at most "
                f"{max_epochs} (0 disables SWA)"
            )

    # ---- subcommand hooks
    def after_fit(self) -> None:
        trainer = self.trainer
        if not self._section(self.config).get("test_after_fit", True) or trainer.interrupted:
            return
        if trainer.world_size > 1:
            # every rank leaves the process group; rank 0 alone tests on one device
            trainer.strategy.barrier("framer_test_after_fit")
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()
        if trainer.global_rank == 0:
            self.final_metrics = run_final_tests(trainer, self.model, self.datamodule)

    def before_test(self) -> None:
        if self.trainer.world_size > 1:
            raise UserError(
                "test on one device (--trainer.devices 1 --trainer.strategy auto): under DDP the test set is padded"
            )

    def after_test(self) -> None:
        if self.trainer.global_rank != 0:
            return
        directory = run_dir(self.trainer)
        run = RunDir(directory) if directory is not None else None
        metrics = {k: float(v) for k, v in self.trainer.callback_metrics.items() if k.startswith("test")}
        write_results(run, self.trainer, self.model, metrics, {"final": self.model})
        print_metrics(metrics, run)

    def before_predict(self) -> None:
        output = self._section(self.config).get("predictions_csv")
        if output is None:
            directory = run_dir(self.trainer)
            if directory is None:
                raise UserError("predict without a CSV logger: give --predictions_csv FILE")
            output = str(RunDir(directory).predictions())
        self.trainer.callbacks.append(PredictionWriter(output))


def _given_batch_counts(args: Sequence[Any], configs: list[tuple[str, Any, int]]) -> dict[str, Any]:
    """The ``trainer.<BATCH_COUNTS>`` values as written in the config files and flags of ``args`` (later wins)."""
    given: list[tuple[int, str, Any]] = []
    for _, data, index in configs:
        trainer = data.get("trainer") if isinstance(data, Mapping) else None
        given += [(index, key, trainer[key]) for key in BATCH_COUNTS if isinstance(trainer, Mapping) and key in trainer]
    for index, arg in enumerate(args):
        for key in BATCH_COUNTS if isinstance(arg, str) else ():
            flag = f"--trainer.{key}"
            if arg.startswith(f"{flag}=") or (arg == flag and index + 1 < len(args)):
                text = arg.split("=", 1)[1] if "=" in arg else args[index + 1]
                given.append((index, key, yaml.safe_load(text) if isinstance(text, str) else text))
    return {key: value for _, key, value in sorted(given, key=lambda g: g[0])}


def default_run_name(config: Any) -> str:
    """The run name when none is given: ``<data set>-<target>-<model>``, e.g. ``mp-e_form-crystalframer`` or
    ``custom-band_gap-crystalformer-small`` (data set: the DataModule's class name without ``DataModule``)."""
    data = config.get("data")
    dataset = str(data.get("class_path") or "").rsplit(".", 1)[-1].removesuffix("DataModule").lower() if data else ""
    target = data.get("init_args", {}).get("target") if data else None
    model = config.get("model.init_args.model") or config.get("model")
    return "-".join(str(part) for part in (dataset, target, model_label(model)) if part) or "default"


def model_label(network: Any) -> str:
    """A network config's name: its CrystalFramer preset (``crystalformer``, ``crystalframer``,
    ``crystalframer-lightweight``, ``crystalframer-<frame>``) with ``-small`` for 2 blocks of width 32 and
    ``-<blocks>x<width>`` for other sizes than the paper's; other classes by their lowercased name."""
    class_path = str(network.get("class_path") or "") if network else ""
    if not class_path.startswith("framer.") or not class_path.endswith(".CrystalFramer"):
        return class_path.rsplit(".", 1)[-1].lower()
    from framer.models import CrystalFramer

    args = {**CrystalFramer.preset_kwargs("crystalframer"), **dict(network.get("init_args") or {})}
    frame, coefs = args.get("frame"), (args.get("dist_coef"), args.get("angle_coef"))
    lightweight = CrystalFramer.preset_kwargs("crystalframer-lightweight")
    if frame == "none":
        name = "crystalformer"
    elif frame == "max":
        light = coefs == (lightweight["dist_coef"], lightweight["angle_coef"])
        name = "crystalframer-lightweight" if light else "crystalframer"
    else:
        name = f"crystalframer-{frame}"
    size = (args.get("num_layers", 4), args.get("model_dim", 128))
    return name + ("" if size == (4, 128) else "-small" if size == (2, 32) else f"-{size[0]}x{size[1]}")


def _constructor_errors(err: BaseException) -> str:
    """The informative lines of a jsonargparse instantiation error (the constructors' own messages)."""
    lines = [line.strip() for line in str(err).splitlines()]
    reasons = [line[2:] for line in lines if line.startswith("- ") and "Expected a <class 'NoneType'>" not in line]
    return "; ".join(reasons) if reasons else (lines[0] if lines else type(err).__name__)


def _stopped(err: BaseException) -> str:
    saved = getattr(err, "framer_checkpoint", None)
    step = getattr(err, "framer_global_step", None)
    return f"saved {saved} at global step {step}; resume with --ckpt_path last" if saved else "no checkpoint saved"


def main(args: Any = None, **cli_kwargs: Any) -> None:
    """Entry point of ``python -m framer.cli`` and the ``framer`` script (exit codes: :mod:`framer.errors`);
    ``cli_kwargs`` go to :class:`FramerCLI` (e.g. ``trainer_defaults`` from :func:`framer.launch.run_inprocess`)."""
    with exit_codes("framer", USER_ERRORS, interruptions=(SIGTERMException,), interrupted=_stopped):
        FramerCLI(args=args, **cli_kwargs)


if __name__ == "__main__":
    main()
