"""Starting a run: compose configs and overrides into ``python -m framer.cli`` arguments, then run them in this
process or as a subprocess, and say how it ended.

    spec = RunSpec(["conf/default.yaml", "conf/data/ewald.yaml"], {"trainer.max_epochs": 2}, quiet=True)
    outcome = run(spec, "subprocess", log=Path("runs/x/launch.log"))
    outcome.ok, outcome.interrupted, outcome.code, outcome.message

Exit codes are the CLI's (:mod:`framer.errors`); 143, stopped by SIGTERM with ``last.ckpt`` saved, tells the caller to
stop too, as a pre-empted job does.
"""

from __future__ import annotations

import contextlib
import gc
import io
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from framer.errors import EXIT_SIGTERM

REPO = Path(__file__).resolve().parent.parent
LOG_TAIL = 3000  # characters of a run's output kept in its outcome's message
STOP_GRACE = 30  # seconds a stopped subprocess gets to save last.ckpt before it is killed
POLL_INTERVAL = 0.5  # seconds between a subprocess run's checks of its timeout and ``poll`` hook


# ---------------------------------------------------------------------------------------------------- arguments
def config_path(path: str | Path) -> str:
    """A config path as given if it exists from here, else relative to the repository (so sweep files and
    manifests naming ``conf/...`` work from any directory)."""
    p = Path(path)
    in_repo = not p.is_absolute() and not p.exists() and (REPO / p).exists()
    return str(REPO / p if in_repo else p)


def cli_value(value: Any) -> str:
    """A value as jsonargparse reads it on the command line (YAML flow syntax; strings as they are)."""
    if isinstance(value, str):
        return value
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()


def quiet_overrides(configs: Sequence[str], overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Overrides that turn the progress bar off: the composed ``trainer.callbacks`` (a later list replaces an earlier
    one, as in jsonargparse) minus progress bars, and ``enable_progress_bar=false`` (Lightning refuses the flag while
    a progress-bar callback is listed)."""
    callbacks: list[Any] = []
    for config in configs:
        data = yaml.safe_load(Path(config).read_text()) or {}
        trainer = data.get("trainer") or {}
        if "callbacks" in trainer:
            callbacks = list(trainer["callbacks"] or [])
    if overrides and "trainer.callbacks" in overrides:
        callbacks = list(overrides["trainer.callbacks"] or [])
    kept = [c for c in callbacks if "ProgressBar" not in str(c)]
    return {"trainer.callbacks": kept, "trainer.enable_progress_bar": False, "trainer.enable_model_summary": False}


@dataclass
class RunSpec:
    """One run of the CLI.

    Args:
        configs: Config files, composed in order (later wins); ``conf/...`` paths work from any directory.
        overrides: Dotted config keys -> values, applied after the configs (``{"trainer.max_epochs": 5}``).
        subcommand: ``fit``, ``test``, ...; None for ``FramerCLI(run=False)``, which takes no subcommand.
        resume: Continue the newest run of the same ``tracking.run_name`` (``--ckpt_path last``).
        quiet: No progress bar and no model summary (batch jobs, sweeps); ``overrides`` still win.
    """

    configs: list[str]
    overrides: dict[str, Any] = field(default_factory=dict)
    subcommand: str | None = "fit"
    resume: bool = False
    quiet: bool = False

    def __post_init__(self) -> None:
        self.configs = [config_path(c) for c in self.configs]

    def args(self) -> list[str]:
        """The CLI's arguments, e.g. ``["fit", "--config", ..., "--trainer.max_epochs=5"]``."""
        overrides = self.overrides
        if self.quiet:
            overrides = {**quiet_overrides(self.configs, overrides), **overrides}
        return [
            *([self.subcommand] if self.subcommand else []),
            *[arg for config in self.configs for arg in ("--config", config)],
            *(f"--{path}={cli_value(value)}" for path, value in overrides.items()),
            *(["--ckpt_path=last"] if self.resume else []),
        ]


def resolved_config(configs: Sequence[str], overrides: Mapping[str, Any] | None = None) -> str:
    """The full config of ``fit --config ... <overrides>`` as ``--print_config`` writes it (nothing is built);
    RuntimeError with the CLI's message when the configs do not parse."""
    from framer.cli import FramerCLI

    args = [*RunSpec(list(configs), dict(overrides or {})).args(), "--print_config"]
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


# ---------------------------------------------------------------------------------------------------- outcomes
@dataclass
class Outcome:
    """How a run ended: its exit ``code`` and, unless it succeeded, a ``message`` (the error and its output's end).
    ``timed_out``/``stopped``: the launcher stopped it (SIGTERM) after its timeout / because its ``poll`` said so."""

    code: int
    message: str = ""
    timed_out: bool = False
    stopped: bool = False

    @property
    def ok(self) -> bool:
        return self.code == 0

    @property
    def interrupted(self) -> bool:
        """Stopped by SIGTERM (pre-emption, ``kill``), not by the launcher: resumable, and the caller should stop."""
        return self.code == EXIT_SIGTERM and not (self.timed_out or self.stopped)


def _outcome(code: int, output: str, timed_out: bool = False, stopped: bool = False) -> Outcome:
    if code == 0:
        return Outcome(0)
    said = [line for line in output.splitlines() if line.startswith("framer: ")]  # the CLI's own last word
    first = f"framer.cli exited with {code}" + (f": {said[-1].removeprefix('framer: ')}" if said else "")
    return Outcome(code, f"{first}\n{output[-LOG_TAIL:]}", timed_out, stopped)


class Tail(io.TextIOBase):
    """A text stream that passes everything on to ``stream`` and keeps the last ``LOG_TAIL`` characters."""

    def __init__(self, stream: Any) -> None:
        super().__init__()
        self.stream, self.text = stream, ""

    def write(self, text: str) -> int:
        self.stream.write(text)
        self.text = (self.text + text)[-LOG_TAIL:]
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


@contextlib.contextmanager
def bare_argv() -> Iterator[None]:
    """Hide this process's own arguments from LightningCLI (which warns when both argv and ``args`` are set)."""
    saved, sys.argv = sys.argv, sys.argv[:1]
    try:
        yield
    finally:
        sys.argv = saved


# ---------------------------------------------------------------------------------------------------- running
def run_inprocess(spec: RunSpec, callbacks: Sequence[Any] = ()) -> Outcome:
    """Run the CLI in this process (fast for many small runs; one device); a crash becomes an outcome. ``callbacks``
    (e.g. Optuna's pruning callback, which holds its trial) follow the configs' (as ``trainer_defaults``)."""
    from framer import cli

    stderr = Tail(sys.stderr)
    try:
        with contextlib.redirect_stderr(stderr), bare_argv():
            cli.main(spec.args(), **({"trainer_defaults": {"callbacks": list(callbacks)}} if callbacks else {}))
        return Outcome(0)
    except SystemExit as exit_:  # main's exits: user error 2, NaN 3, SIGTERM 143; the parser's 2
        code = exit_.code if isinstance(exit_.code, int) else 0 if exit_.code is None else 1
        return _outcome(code, stderr.text)
    except Exception as err:  # one crashed run must not take its caller down
        return _outcome(1, f"{stderr.text}\nframer: {type(err).__name__}: {err}\n{traceback.format_exc()}")
    finally:
        gc.collect()


def run_subprocess(
    spec: RunSpec, log: Path, *, timeout: float | None = None, poll: Callable[[], bool] | None = None
) -> Outcome:
    """Run ``python -m framer.cli`` in its own process group (with its DDP ranks, if any), output appended to ``log``.
    After ``timeout`` seconds, when ``poll()`` returns True, or when this process is interrupted or gets SIGTERM, the
    group gets SIGTERM (the run saves ``last.ckpt``), then SIGKILL after a grace period."""
    cmd = [sys.executable, "-m", "framer.cli", *spec.args()]
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            with _sigterm_passed_on(proc):
                reason = _wait(proc, timeout, poll)
                if reason:
                    said = f"after {timeout:.0f} s (timeout)" if reason == "timeout" else "by its caller (poll)"
                    out.write(f"\nframer: run stopped {said}\n")
                    out.flush()
                    stop(proc)
        except BaseException:
            stop(proc)
            raise
    code = proc.returncode if proc.returncode >= 0 else 128 - proc.returncode  # killed by signal n: 128 + n
    return _outcome(code, log.read_text()[-LOG_TAIL:], reason == "timeout", reason == "poll")


def _wait(proc: subprocess.Popen, timeout: float | None, poll: Callable[[], bool] | None) -> str | None:
    """Wait for ``proc`` to end (None), or return why to stop it first: ``"timeout"`` or ``"poll"`` (both looked at
    every ``POLL_INTERVAL`` seconds)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=POLL_INTERVAL)
            return None
        if deadline is not None and time.monotonic() >= deadline:
            return "timeout"
        if poll is not None and poll():
            return "poll"


def run(spec: RunSpec, mode: Literal["subprocess", "inprocess"], log: Path | None = None) -> Outcome:
    """``run_subprocess(spec, log)`` or ``run_inprocess(spec)`` (which prints to this process's streams)."""
    return run_subprocess(spec, log) if mode == "subprocess" else run_inprocess(spec)


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group of a run started by :func:`run_subprocess`, then SIGKILL to what is left."""
    for sig, wait in ((signal.SIGTERM, STOP_GRACE), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=wait)
            return


@contextlib.contextmanager
def _sigterm_passed_on(proc: subprocess.Popen) -> Iterator[None]:
    """While waiting for ``proc``, a SIGTERM to this process goes to ``proc``'s group instead of ending this one,
    so the run saves ``last.ckpt`` and its exit code says it was interrupted (signals need the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def pass_on(signum: int, frame: Any) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, pass_on)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
