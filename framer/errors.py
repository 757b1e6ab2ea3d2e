"""How framer's commands end: exit codes, user errors as one line, and the guard every ``python -m framer.*`` uses.

- 0: done;
- 2: user error: a missing or bad file, setting or checkpoint; one ``<prog>: error: ...`` line on stderr;
- 3: training stopped on a non-finite loss, gradient or optimizer step (:class:`NonFiniteError`);
- 143: stopped by SIGTERM (128 + 15) after saving ``last.ckpt``; the same command resumes.

``FRAMER_DEBUG=1`` re-raises instead, so the traceback is shown. A command that ends normally says how long it took
(``<prog>: finished in 1 min 23 s``, one line on stderr).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from typing import NoReturn

EXIT_USER_ERROR = 2
EXIT_NON_FINITE = 3
EXIT_SIGTERM = 128 + signal.SIGTERM
DEBUG_ENV = "FRAMER_DEBUG"
#: exceptions from the standard library that mean "the file you named is not there" when they end a command
FILE_ERRORS: tuple[type[BaseException], ...] = (FileNotFoundError, NotADirectoryError, IsADirectoryError)


class UserError(Exception):
    """A mistake in the command or its inputs: reported as one line, without a traceback (exit code 2)."""


class NonFiniteError(RuntimeError):
    """Training met a NaN or infinite loss, gradient or weight and stopped before it reached the weights (exit 3)."""


def one_line(err: BaseException) -> str:
    """The exception's message on one line (with the file name of a FileNotFoundError that does not say it)."""
    text = str(err).strip() or type(err).__name__
    filename = getattr(err, "filename", None)
    if isinstance(err, FileNotFoundError) and filename and str(filename) not in text:
        text = f"{text}: {filename}"
    return " ".join(text.split())


def causes(err: BaseException) -> list[BaseException]:
    """``err`` and the exceptions it was raised from or while handling, outermost first."""
    chain = [err]
    while (nxt := chain[-1].__cause__ or chain[-1].__context__) is not None and nxt not in chain:
        chain.append(nxt)
    return chain


def elapsed(seconds: float) -> str:
    """``42.0 s``, ``3 min 05 s``, ``2 h 01 min``."""
    minutes, secs = divmod(round(seconds), 60)
    if minutes == 0:
        return f"{seconds:.1f} s"
    return f"{minutes} min {secs:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def fail(prog: str, message: str, code: int = EXIT_USER_ERROR) -> NoReturn:
    """Print ``<prog>: error: <message>`` (one line) and exit with ``code``."""
    sys.stderr.write(f"{prog}: error: {' '.join(str(message).split())}\n")
    raise SystemExit(code)


@contextlib.contextmanager
def exit_codes(
    prog: str,
    user_errors: tuple[type[BaseException], ...] = (),
    interruptions: tuple[type[BaseException], ...] = (),
    interrupted: Callable[[BaseException], str] | None = None,
) -> Iterator[None]:
    """Turn the exceptions that end a command into its exit code and one line on stderr: 2 for :class:`UserError`,
    :data:`FILE_ERRORS` and ``user_errors``; 3 for :class:`NonFiniteError` and ``FloatingPointError``; 143 for
    ``interruptions`` (e.g. Lightning's ``SIGTERMException``), with ``<prog>: stopped by SIGTERM: <interrupted(err)>``.
    Anything else propagates (a bug: its traceback is wanted)."""
    started = time.monotonic()
    try:
        yield
        sys.stderr.write(f"{prog}: finished in {elapsed(time.monotonic() - started)}\n")
    except interruptions as err:
        what = interrupted(err) if interrupted is not None else "no checkpoint saved"
        sys.stderr.write(f"{prog}: stopped by SIGTERM: {what}\n")
        raise SystemExit(EXIT_SIGTERM) from None
    except (UserError, *FILE_ERRORS, *user_errors, NonFiniteError, FloatingPointError) as err:
        if os.environ.get(DEBUG_ENV):
            raise
        user_error = isinstance(err, (UserError, *FILE_ERRORS, *user_errors))
        fail(prog, one_line(err), EXIT_USER_ERROR if user_error else EXIT_NON_FINITE)
