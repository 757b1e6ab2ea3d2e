"""framer.io (JSON, CSV, locks) and framer.errors (exit codes of every command, one line per user error)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from framer.errors import (
    EXIT_NON_FINITE,
    EXIT_SIGTERM,
    EXIT_USER_ERROR,
    NonFiniteError,
    UserError,
    exit_codes,
    one_line,
)
from framer.io import file_lock, read_json, to_plain, write_csv_rows, write_json

REPO = Path(__file__).resolve().parents[2]


def test_to_plain_is_lenient_or_strict():
    value = {"a": (1, 2.5), 3: {"b": np.float32(0.5), "c": torch.tensor(2)}, "p": Path("x/y"), "s": {4}}
    assert to_plain(value) == {"a": [1, 2.5], "3": {"b": 0.5, "c": 2}, "p": "x/y", "s": [4]}
    assert to_plain({"a": (1, [None, True]), 2: "x"}, strict=True) == {"a": [1, [None, True]], "2": "x"}
    for bad in (Path("x"), {4}, torch.tensor(1.0), object()):
        with pytest.raises(TypeError, match="is not plain data"):
            to_plain({"k": [bad]}, strict=True)


def test_json_round_trip_and_missing_or_bad_files_read_as_empty(tmp_path):
    path = write_json(tmp_path / "sub" / "x.json", {"b": np.int64(3), "a": [math.pi]})
    assert path.read_text() == '{\n  "a": [\n    3.141592653589793\n  ],\n  "b": 3\n}\n'
    assert read_json(path) == {"a": [math.pi], "b": 3}
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "list.json").write_text("[1, 2]")
    assert read_json(tmp_path / "bad.json") == read_json(tmp_path / "list.json") == read_json(tmp_path / "none") == {}


def test_csv_rows_keep_full_float_precision(tmp_path):
    path = write_csv_rows(tmp_path / "p.csv", ("id", "prediction"), [("a", 0.1 + 0.2), ("b", 1)])
    assert path.read_text() == "id,prediction\na,0.30000000000000004\nb,1\n"


def test_file_lock_excludes_other_processes(tmp_path):
    lock, marker = tmp_path / "x.lock", tmp_path / "released"
    holder = (
        "import sys, time\nfrom pathlib import Path\nfrom framer.io import file_lock\n"
        "with file_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(1)\n"
        "    Path(sys.argv[2]).write_text('x')\n"
    )
    cmd = [sys.executable, "-c", holder, str(lock), str(marker)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert proc.stdout.readline().strip() == "held"
    with file_lock(lock):
        assert marker.is_file()  # the lock came only after the holder's last step under it
    assert proc.wait(timeout=30) == 0


def _ended(body, **kwargs) -> tuple[int | None, str]:
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_info, exit_codes("prog", **kwargs):
        body()
    return exit_info.value.code, err.getvalue()


class Stopped(SystemExit):
    """Stands in for Lightning's SIGTERMException (a SystemExit whose code is None)."""


def _raise(err: BaseException):
    def body():
        raise err

    return body


def test_exit_codes_of_user_errors_non_finite_stops_and_interruptions(monkeypatch):
    monkeypatch.delenv("FRAMER_DEBUG", raising=False)
    assert _ended(_raise(UserError("bad\n  value"))) == (EXIT_USER_ERROR, "prog: error: bad value\n")
    assert _ended(_raise(FileNotFoundError(2, "No such file", "a.yaml"))) == (
        EXIT_USER_ERROR,
        "prog: error: [Errno 2] No such file: 'a.yaml'\n",
    )
    assert _ended(_raise(KeyError("k")), user_errors=(KeyError,))[0] == EXIT_USER_ERROR
    assert _ended(_raise(NonFiniteError("loss is nan")))[0] == EXIT_NON_FINITE
    assert _ended(_raise(FloatingPointError("overflow")))[0] == EXIT_NON_FINITE
    stopped = Stopped()
    stopped.step = 7
    code, err = _ended(_raise(stopped), interruptions=(Stopped,), interrupted=lambda e: f"at step {e.step}")
    assert (code, err) == (EXIT_SIGTERM, "prog: stopped by SIGTERM: at step 7\n")
    with pytest.raises(ZeroDivisionError), exit_codes("prog"):  # a bug keeps its traceback
        _raise(ZeroDivisionError())()
    monkeypatch.setenv("FRAMER_DEBUG", "1")
    with pytest.raises(UserError), exit_codes("prog"):
        _raise(UserError("shown with its traceback"))()


def test_framers_errors_are_user_errors_and_keep_their_builtin_bases():
    from framer.checkpoints import CheckpointError, CheckpointWriteError
    from framer.instantiate import RefusedClassPath
    from framer.module import ConfigurationError
    from framer.rundir import RunDirectoryBusy
    from framer.tracking import TrackingError

    for cls, base in [
        (CheckpointError, ValueError),
        (CheckpointWriteError, OSError),
        (RefusedClassPath, ValueError),
        (ConfigurationError, ValueError),
        (RunDirectoryBusy, RuntimeError),
        (TrackingError, ValueError),
    ]:
        assert issubclass(cls, UserError) and issubclass(cls, base), cls
    assert one_line(CheckpointWriteError(28, "No space left on device")) == "[Errno 28] No space left on device"


@pytest.mark.parametrize(
    ("face", "argv"),
    [
        ("framer.report", ["--runs", "no/such/runs", "--out", "out"]),
        ("framer.matbench.__main__", ["--task", "matbench_log_kvrh", "--data-home", "nowhere"]),
        ("framer.matbench.__main__", ["--task", "matbench_log_kvrh", "--set", "no-equals-sign"]),
        ("framer.reproduce", ["--columns", "mp/nothing", "--dry-run"]),
    ],
    ids=["report", "matbench-data", "matbench-set", "reproduce-column"],
)
def test_every_command_ends_a_user_error_with_one_line_and_exit_2(tmp_path, monkeypatch, capsys, face, argv):
    import importlib

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FRAMER_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        importlib.import_module(face).main(argv)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("framer: error:")]
    assert exit_info.value.code == EXIT_USER_ERROR and len(errors) == 1, err[-2000:]
