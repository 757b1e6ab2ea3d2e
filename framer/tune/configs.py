"""Helpers around ``framer.cli.FramerCLI`` for programs that compose configs: resolve, and quiet the progress bar."""

from __future__ import annotations

import contextlib
import io
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml


@contextlib.contextmanager
def bare_argv() -> Iterator[None]:
    """Hide this process's own arguments from LightningCLI (which warns when both argv and ``args`` are set)."""
    saved = sys.argv
    sys.argv = saved[:1]
    try:
        yield
    finally:
        sys.argv = saved


REPO = Path(__file__).resolve().parents[2]


def cli_value(value: Any) -> str:
    """A value as jsonargparse reads it on the command line (YAML flow syntax)."""
    if isinstance(value, str):
        return value
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()


def cli_overrides(values: Mapping[str, Any]) -> list[str]:
    """``{"a.b": 1}`` -> ``["--a.b=1"]``."""
    return [f"--{path}={cli_value(v)}" for path, v in values.items()]


def resolve_path(path: str | Path) -> str:
    """A config path as given if it exists from here, else relative to the repository (so sweep files and
    manifests naming ``conf/...`` work from any directory)."""
    p = Path(path)
    if p.is_absolute() or p.exists() or not (REPO / p).exists():
        return str(p)
    return str(REPO / p)


def config_args(configs: Sequence[str]) -> list[str]:
    return [arg for config in configs for arg in ("--config", str(config))]


def resolved_config(configs: Sequence[str], overrides: Mapping[str, Any] | None = None) -> str:
    """The full config of ``fit --config ... <overrides>`` as ``--print_config`` writes it (nothing is built).

    Raises RuntimeError with the CLI's message when the configs do not parse.
    """
    from framer.cli import FramerCLI

    args = ["fit", *config_args(configs), *cli_overrides(overrides or {}), "--print_config"]
    out, err = io.StringIO(), io.StringIO()
    code: Any = None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), bare_argv():
        try:
            FramerCLI(args=args)
        except SystemExit as exit_:
            code = exit_.code
    if code not in (0, None) or not out.getvalue().strip():
        raise RuntimeError(f"could not resolve the config (exit {code}): {err.getvalue().strip()}")
    return out.getvalue()


def config_callbacks(configs: Sequence[str], overrides: Mapping[str, Any] | None = None) -> list[Any]:
    """``trainer.callbacks`` after composing the configs (a later list replaces an earlier one, as in jsonargparse)."""
    callbacks: list[Any] = []
    for config in configs:
        data = yaml.safe_load(Path(config).read_text()) or {}
        trainer = data.get("trainer") or {}
        if "callbacks" in trainer:
            callbacks = list(trainer["callbacks"] or [])
    if overrides and "trainer.callbacks" in overrides:
        callbacks = list(overrides["trainer.callbacks"] or [])
    return callbacks


def quiet_overrides(configs: Sequence[str], overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Overrides that turn the progress bar off: the configs' callbacks minus progress bars, and
    ``enable_progress_bar=false`` (Lightning refuses the flag while a progress-bar callback is listed)."""
    kept = [c for c in config_callbacks(configs, overrides) if "ProgressBar" not in str(c)]
    return {"trainer.callbacks": kept, "trainer.enable_progress_bar": False, "trainer.enable_model_summary": False}
