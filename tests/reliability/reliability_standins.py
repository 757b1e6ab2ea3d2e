"""Stand-ins for the reliability tests: a small network with dropout and callbacks that inject failures.

They are imported by class path (``--model.init_args.model reliability_standins.PooledMLP``,
``--trainer.callbacks+=...``), also from ``python -m framer.cli`` subprocesses (see ``conftest.cli_env``).
"""

from __future__ import annotations

import errno
import hashlib
import math
import os
import signal
import time
from pathlib import Path

from lightning.pytorch.callbacks import Callback

from framer import testing

#: what the failure-injecting callbacks saw, for the tests to inspect (in-process runs only)
SEEN: dict[str, object] = {}


class PooledMLP(testing.PooledMLP):
    """:class:`framer.testing.PooledMLP` with dropout on by default (so resuming exactly needs the random state)."""

    def __init__(self, hidden: int = 16, dropout: float = 0.1) -> None:
        super().__init__(hidden, dropout)


def file_digest(path: str | Path) -> str | None:
    path = Path(path)
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def _last_ckpt(trainer) -> Path:
    return Path(trainer.checkpoint_callback.dirpath) / "last.ckpt"


class CrashAt(Callback):
    """Raise RuntimeError before the training batch that would make optimizer step ``step + 1`` (a crash).

    Args:
        step: Global step at which the run dies.
    """

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError(f"simulated crash at global step {self.step}")


class SignalAt(Callback):
    """Send ``signal`` to this process at the end of the training batch that completes optimizer step ``step``.

    Args:
        step: Global step after which the signal is sent.
        signal: Signal name, e.g. ``SIGTERM``.
    """

    def __init__(self, step: int, signal: str = "SIGTERM") -> None:
        self.step = step
        self.signal = signal

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            SEEN["signal_step"] = trainer.global_step
            os.kill(os.getpid(), getattr(signal, self.signal))


class PoisonTarget(Callback):
    """Replace the first target of the batch that would become optimizer step ``step + 1`` with ``value``.

    Records the digest of ``last.ckpt`` at that moment in ``SEEN["last_ckpt_digest"]``.

    Args:
        step: Global step before the poisoned batch.
        value: ``nan``, ``inf`` or ``-inf``.
    """

    def __init__(self, step: int, value: str = "nan") -> None:
        self.step = step
        self.value = float(value)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            SEEN["last_ckpt_digest"] = file_digest(_last_ckpt(trainer))
            SEEN["poisoned_ids"] = list(batch.ids)
            SEEN["weights"] = {k: v.detach().clone() for k, v in pl_module.model.state_dict().items()}
            batch.y[0] = self.value


class PoisonGradient(Callback):
    """Set one gradient entry to ``inf`` after the backward pass of the batch after optimizer step ``step``.

    Args:
        step: Global step before the poisoned backward pass.
        parameter: Name of the parameter (in the LightningModule) whose gradient is poisoned.
    """

    def __init__(self, step: int, parameter: str = "model.mlp.0.weight") -> None:
        self.step = step
        self.parameter = parameter

    def on_after_backward(self, trainer, pl_module) -> None:
        if trainer.global_step == self.step:
            SEEN["weights"] = {k: v.detach().clone() for k, v in pl_module.model.state_dict().items()}
            dict(pl_module.named_parameters())[self.parameter].grad.view(-1)[0] = math.inf


_REACHED: dict[str, int] = {}  # PauseAt: times each marker's step was reached in this process


class PauseAt(Callback):
    """After the training batch that completes optimizer step ``step``, create ``marker`` and wait there.

    The test kills the process (SIGKILL) or asks it to stop (SIGTERM) once the marker exists, so the signal lands at
    a known point in the middle of an epoch however slow the machine is. The wait ends early on SIGTERM (Lightning
    then stops after this batch) and after ``timeout`` seconds. It pauses once: not at all if the marker exists.

    Args:
        step: Global step after which the run pauses.
        marker: File created when the pause starts (it holds the global step).
        timeout: Longest pause in seconds.
        occurrence: Pause the n-th time this process reaches ``step`` (e.g. in the n-th trial of a study).
    """

    def __init__(self, step: int, marker: str, timeout: float = 120.0, occurrence: int = 1) -> None:
        self.step = step
        self.marker = marker
        self.timeout = timeout
        self.occurrence = occurrence

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step != self.step or Path(self.marker).exists():
            return
        _REACHED[self.marker] = _REACHED.get(self.marker, 0) + 1
        if _REACHED[self.marker] < self.occurrence:
            return
        Path(self.marker).write_text(str(trainer.global_step))
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline and not trainer.received_sigterm:
            time.sleep(0.05)


class _KillingFile:
    """A file whose writes SIGKILL this process once ``limit`` bytes have gone through them."""

    def __init__(self, handle, limit: int) -> None:
        self._handle = handle
        self._left = limit

    def write(self, data) -> int:
        if len(data) >= self._left:
            self._handle.write(data[: self._left])
            self._handle.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        self._left -= len(data)
        return self._handle.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._handle.close()

    def __getattr__(self, name):
        return getattr(self._handle, name)


def kill_while_writing(module, name_part: str, limit: int) -> None:
    """Make ``open`` in ``module`` SIGKILL the process after ``limit`` bytes written to a file named ``*name_part*``.

    The process dies in the middle of the write, as on a power cut or an out-of-memory kill; nothing runs after it.
    """
    import builtins

    def killing_open(file, mode="r", *args, **kwargs):
        handle = builtins.open(file, mode, *args, **kwargs)  # noqa: SIM115 (returned to the caller)
        if name_part in Path(file).name and any(m in mode for m in "wxa"):
            return _KillingFile(handle, limit)
        return handle

    module.open = killing_open


class KillDuringSave(Callback):
    """SIGKILL the process half-way through writing the checkpoint files of optimizer step ``step``.

    Args:
        step: Global step whose checkpoint save is cut short.
        limit: Bytes written before the kill.
    """

    def __init__(self, step: int, limit: int = 2000) -> None:
        self.step = step
        self.limit = limit

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        if trainer.global_step == self.step:
            import framer.io

            kill_while_writing(framer.io, ".ckpt.", self.limit)


class _FullDiskFile(_KillingFile):
    """A file whose writes fail with ENOSPC once ``limit`` bytes have gone through them (a disk that fills up)."""

    def write(self, data) -> int:
        if len(data) >= self._left:
            self._handle.write(data[: self._left])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._left -= len(data)
        return self._handle.write(data)


class DiskFullDuringSave(Callback):
    """From optimizer step ``step`` on, checkpoint files fail with ENOSPC after ``limit`` bytes, as on a full disk.

    (A real full disk cannot be made safely here; the error is injected at the write, where the OS would raise it.)

    Args:
        step: Global step whose checkpoint save is the first to fail.
        limit: Bytes written before the error.
    """

    def __init__(self, step: int, limit: int = 2000) -> None:
        self.step = step
        self.limit = limit

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        if trainer.global_step == self.step:
            import builtins

            import framer.io

            SEEN["last_ckpt_digest"] = file_digest(_last_ckpt(trainer))

            def full_disk_open(file, mode="r", *args, **kwargs):
                handle = builtins.open(file, mode, *args, **kwargs)  # noqa: SIM115 (returned to the caller)
                if ".ckpt." in Path(file).name and any(m in mode for m in "wxa"):
                    return _FullDiskFile(handle, self.limit)
                return handle

            framer.io.open = full_disk_open


def meet_before_cache_write(rendezvous: str, parties: int = 2, timeout: float = 120.0) -> None:
    """Make this process wait, just before it writes a data cache, until ``parties`` processes are there.

    Processes that all found no cache and built it then write it at the same moment: a deterministic race.
    """
    import framer.data.cache as cache

    write = cache.write_cache

    def meeting_write(*args, **kwargs):
        Path(rendezvous).mkdir(parents=True, exist_ok=True)
        (Path(rendezvous) / str(os.getpid())).touch()
        deadline = time.monotonic() + timeout
        while len(list(Path(rendezvous).iterdir())) < parties and time.monotonic() < deadline:
            time.sleep(0.05)
        return write(*args, **kwargs)

    cache.write_cache = meeting_write
