"""Two workers on one study in a local PostgreSQL (the multi-machine storage), via `postgresql://` URLs."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import optuna
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


def _pg_bin() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return os.path.dirname(found[-1])
    initdb = shutil.which("initdb")
    return os.path.dirname(initdb) if initdb else None


def _as_db_user(cmd: str) -> list[str]:
    """Run as `postgres` when we are root (initdb refuses root)."""
    return ["su", "postgres", "-c", cmd] if os.geteuid() == 0 else ["sh", "-c", cmd]


@pytest.fixture
def postgres():
    pg = _pg_bin()
    if pg is None:
        pytest.skip("PostgreSQL server binaries not installed (apt-get install postgresql)")
    data = Path(tempfile.mkdtemp(prefix="framer-pg-"))  # under /tmp: pytest's tmp dirs are private to this user
    if os.geteuid() == 0:
        shutil.chown(data, "postgres")
    port = 25000 + os.getpid() % 5000
    subprocess.run(_as_db_user(f"{pg}/initdb -D {data} -A trust -U postgres"), check=True, capture_output=True)
    start = f"{pg}/pg_ctl -D {data} -o '-h 127.0.0.1 -p {port} -k {data}' -l {data}/log -w start"
    subprocess.run(_as_db_user(start), check=True, capture_output=True)
    try:
        subprocess.run(_as_db_user(f"{pg}/createdb -h 127.0.0.1 -p {port} optuna"), check=True, capture_output=True)
        yield f"postgresql://postgres@127.0.0.1:{port}/optuna"
    finally:
        subprocess.run(_as_db_user(f"{pg}/pg_ctl -D {data} -m fast stop"), capture_output=True)
        shutil.rmtree(data, ignore_errors=True)


@pytest.mark.slow
def test_two_workers_share_a_postgresql_study(postgres, sweep_env):
    tmp_path, _ = sweep_env
    raw = yaml.safe_load((REPO / "sweeps" / "smoke.yaml").read_text())
    raw.update(study="pg", n_trials=4, pruner={"type": "none"})
    sweep = tmp_path / "pg.yaml"
    sweep.write_text(yaml.safe_dump(raw))
    cmd = [sys.executable, "-m", "framer.tune", "--sweep", str(sweep), "--storage", postgres, "--no-figures"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in "ab"]
    outputs = [p.communicate(timeout=1200)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[-2000:] for o in outputs]
    study = optuna.load_study(study_name="pg", storage=postgres.replace("postgresql://", "postgresql+psycopg2://"))
    finished = [t for t in study.trials if t.state.is_finished()]
    assert 4 <= len(finished) <= 5 and all(t.state == optuna.trial.TrialState.COMPLETE for t in finished)
    assert len({t.user_attrs["worker"] for t in study.trials}) == 2
    assert len({tuple(sorted(t.params.items())) for t in finished}) == len(finished)  # no repeated points
    assert (tmp_path / "sweeps" / "pg" / "best.yaml").is_file()
