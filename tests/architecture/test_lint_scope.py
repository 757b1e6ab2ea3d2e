"""`make lint` covers every source file: ruff's excludes (the data, runs and results folders a checkout fills) must
not also drop package or test folders that share a name with them (``"data"`` once excluded framer/data)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_ruff_checks_every_python_file_of_the_package_tests_and_bench():
    ruff = Path(sys.executable).with_name("ruff")
    done = subprocess.run(
        [str(ruff), "check", "--show-files", "framer", "tests", "bench"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    checked = {Path(line.strip()).resolve() for line in done.stdout.splitlines() if line.strip().endswith(".py")}
    tracked = subprocess.run(
        ["git", "ls-files", "framer/*.py", "tests/*.py", "bench/*.py"], cwd=REPO, capture_output=True, text=True
    ).stdout.split()
    assert tracked, "not a git checkout"
    missing = sorted(name for name in tracked if (REPO / name).resolve() not in checked)
    assert missing == []
