"""framer.reproduce: planning every cell, skipping finished runs, resuming, recording failures (fake training)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import yaml

import framer.cli
from framer import plots, reproduce
from framer.launch import EXIT_SIGTERM, Outcome
from framer.report import PaperTable, RunKey, write_report

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def paper() -> PaperTable:
    return PaperTable.load()


def test_paper_manifest_covers_the_table(paper):
    manifest = reproduce.Manifest.load(reproduce.MANIFESTS["paper"], paper)
    runs = reproduce.plan(manifest, paper)
    assert len(runs) == 7 * 9 * len(manifest.seeds)
    run = next(r for r in runs if r.key == RunKey("crystalframer-pca", "jarvis/ehull", manifest.seeds[0]))
    cell = ["conf/default.yaml", "conf/data/jarvis.yaml", "conf/model/crystalframer-pca.yaml"]
    assert [str(Path(c).resolve().relative_to(REPO)) for c in run.spec.configs] == cell
    assert run.spec.overrides["data.init_args.target"] == "ehull"
    assert all(Path(c).is_file() for r in runs for c in r.spec.configs)
    args = replace(run.spec, resume=True).args()
    assert args[0] == "fit" and args[-1] == "--ckpt_path=last"
    assert f"--tracking.run_name={run.key.dirname}" in args
    assert f"--seed_everything={manifest.seeds[0]}" in args
    assert "--data.init_args.target=ehull" in args
    assert "--trainer.enable_progress_bar=false" in args


def test_smoke_manifest_fills_placeholders(paper):
    manifest = reproduce.Manifest.load(reproduce.MANIFESTS["smoke"], paper)
    runs = reproduce.plan(manifest, paper)
    assert manifest.smoke and manifest.seeds == [0, 1, 2] and len(runs) == 63 * 3  # three seeds: ensembles
    assert set(manifest.stand_ins) == {c.key for c in paper.columns}
    seeds = {r.key.column: r.spec.overrides["data.init_args.split_seed"] for r in runs}
    assert seeds["mp/e_form"] == 0 and seeds["jarvis/ehull"] == 8


def test_manifest_errors(tmp_path, paper):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"configs": ["conf/default.yaml"], "typo": 1}))
    with pytest.raises(ValueError, match="unknown keys"):
        reproduce.Manifest.load(bad, paper)
    bad.write_text(yaml.safe_dump({"configs": ["conf/default.yaml"], "columns": ["mp/nothing"]}))
    with pytest.raises(ValueError, match="unknown columns"):
        reproduce.Manifest.load(bad, paper)


def fake_fit(calls: list, fail: set[str] = frozenset(), interrupt: set[str] = frozenset()):
    """Stands in for launch.run: records the call, writes what a finished run writes (or fails, or is stopped by
    SIGTERM after saving last.ckpt)."""

    def run(spec, mode, log):
        name = spec.overrides["tracking.run_name"]
        root = Path(spec.overrides["tracking.save_dir"]) / name
        calls.append((name, spec.resume))
        if name in fail | interrupt:
            (root / "version_0" / "checkpoints").mkdir(parents=True, exist_ok=True)
            (root / "version_0" / "checkpoints" / "last.ckpt").write_text("x")
            return Outcome(EXIT_SIGTERM) if name in interrupt else Outcome(1, "CUDA out of memory (pretend)")
        version = root / "version_0"
        version.mkdir(parents=True, exist_ok=True)
        (version / "results.json").write_text(json.dumps({"metrics": {"test/mae": 0.02, "test_best/mae": 0.021}}))
        (version / "predictions.csv").write_text("id,target,prediction\na,1.0,1.02\nb,2.0,1.98\n")
        (version / "metrics.csv").write_text("epoch,step,train/loss,val/mae\n0,1,1.0,\n0,1,,0.5\n1,2,0.5,\n1,2,,0.3\n")
        return Outcome(0)

    return run


def test_execute_skips_resumes_and_records_failures(tmp_path, paper, monkeypatch):
    manifest = reproduce.Manifest.load(reproduce.MANIFESTS["smoke"], paper)
    manifest.runs_dir = tmp_path / "runs"
    manifest.models, manifest.columns = ["crystalformer", "crystalframer"], ["mp/e_form", "jarvis/ehull"]
    manifest.seeds = [0]
    runs = reproduce.plan(manifest, paper)
    reproduce.write_manifest(manifest, runs)
    calls: list = []
    flaky = "jarvis_ehull__crystalframer__seed0"
    monkeypatch.setattr(plots, "figures_of_run", lambda run, title="": {})

    counts = reproduce.execute(runs, "inprocess", runner=fake_fit(calls, fail={flaky}))
    assert counts == {"finished": 3, "skipped": 0, "failed": 1, "resumed": 0, "interrupted": 0}
    assert "CUDA out of memory" in (tmp_path / "runs" / flaky / "FAILED").read_text()
    status = pd.read_csv(write_report(tmp_path / "runs", tmp_path / "out", figures=False)["runs"])
    assert sorted(status["status"]) == ["failed"] + ["finished"] * 3  # every run of the manifest is listed

    calls.clear()
    counts = reproduce.execute(runs, "inprocess", runner=fake_fit(calls))
    assert calls == [(flaky, True)]  # only the failed run again, resumed from its last.ckpt
    assert counts == {"finished": 1, "skipped": 3, "failed": 0, "resumed": 1, "interrupted": 0}
    assert not (tmp_path / "runs" / flaky / "FAILED").exists()


def test_shards_split_the_runs(tmp_path, paper, monkeypatch):
    manifest = reproduce.Manifest.load(reproduce.MANIFESTS["smoke"], paper)
    manifest.runs_dir = tmp_path / "runs"
    runs = reproduce.plan(manifest, paper)
    seen: list = []
    monkeypatch.setattr(plots, "figures_of_run", lambda run, title="": {})
    for i in range(3):
        reproduce.execute(runs, "inprocess", shard=(i, 3), runner=fake_fit(seen))
    assert sorted(name for name, _ in seen) == sorted(r.key.dirname for r in runs)


def test_an_interrupted_run_stops_the_loop_and_resumes_next_time(tmp_path, paper, monkeypatch):
    manifest = reproduce.Manifest.load(reproduce.MANIFESTS["smoke"], paper)
    manifest.runs_dir = tmp_path / "runs"
    manifest.models, manifest.columns = ["crystalformer"], ["mp/e_form", "mp/gap", "jarvis/ehull"]
    manifest.seeds = [0]
    runs = reproduce.plan(manifest, paper)
    monkeypatch.setattr(plots, "figures_of_run", lambda run, title="": {})
    calls: list = []
    stopped = "mp_gap__crystalformer__seed0"
    counts = reproduce.execute(runs, "inprocess", runner=fake_fit(calls, interrupt={stopped}))
    assert [name for name, _ in calls] == ["mp_e_form__crystalformer__seed0", stopped]  # the third never started
    assert counts == {"finished": 1, "skipped": 0, "failed": 0, "resumed": 0, "interrupted": 1}
    assert not (tmp_path / "runs" / stopped / "FAILED").exists()  # interrupted, not failed
    calls.clear()
    reproduce.execute(runs, "inprocess", runner=fake_fit(calls))
    assert calls == [(stopped, True), ("jarvis_ehull__crystalformer__seed0", False)]


def test_a_preempted_inprocess_run_stops_reproduce_with_exit_143(tmp_path, monkeypatch):
    """Lightning raises SIGTERMException, a SystemExit whose code is None, when SIGTERM stops a fit. It used to
    count as success: the cell was marked FAILED and the next one started in the job being pre-empted."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    started = []

    def preempted(*args, **kwargs):
        started.append(kwargs.get("args"))
        raise SIGTERMException()

    monkeypatch.setattr(framer.cli, "FramerCLI", preempted)
    monkeypatch.setattr(plots, "figures_of_run", lambda run, title="": {})
    argv = ["--smoke", "--launcher", "inprocess", "--models", "crystalformer", "--columns", "mp/e_form", "mp/gap"]
    assert reproduce.main([*argv, "--runs-dir", str(tmp_path / "runs")]) == EXIT_SIGTERM
    assert len(started) == 1
    assert not (tmp_path / "runs" / "mp_e_form__crystalformer__seed0" / "FAILED").exists()


def test_a_bad_manifest_is_one_error_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"configs": ["conf/default.yaml"], "typo": 1}))
    with pytest.raises(SystemExit) as exit_info:
        reproduce.main(["--manifest", str(bad), "--dry-run"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("framer: error:") and "typo" in err[0], err


def test_dry_run_prints_commands(capsys, tmp_path):
    assert reproduce.main(["--dry-run", "--runs-dir", str(tmp_path), "--models", "crystalformer"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 9 * 3 and all("python -m framer.cli fit" in line for line in out)


@pytest.mark.slow
def test_make_reproduce_table_smoke_on_a_clean_clone(tmp_path):
    """`make reproduce-table SMOKE=1` in a fresh clone: every run trains on CPU, tables and figures appear."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", "--local", str(REPO), str(clone)], check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("FRAMER_DATA_DIR", "MLFLOW_TRACKING_URI")}
    stamp = tmp_path / "venv-ready"  # the shared .venv is built: skip `make venv` (it would re-point the install)
    stamp.touch()
    result = subprocess.run(
        ["make", "reproduce-table", "SMOKE=1", f"VENV={REPO / '.venv'}", f"STAMP={stamp}"],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = clone / "results" / "smoke"
    table = pd.read_csv(results / "table.csv")
    paper = PaperTable.load(clone / "conf" / "paper_results.yaml")
    assert list(table["model"]) == list(paper.models)
    assert all(f"{c.key}:mae" in table.columns for c in paper.columns)
    assert table[[f"{c.key}:n" for c in paper.columns]].to_numpy().min() == 3  # every cell trained, three seeds
    md = (results / "table.md").read_text()
    assert "not paper numbers" in md and "**missing** (" not in md  # no cell marked missing (the legend names it)
    figures = {p.name for p in (results / "figures").glob("*.png")}
    assert "frames.png" in figures and {f"parity_{m}.png" for m in paper.models} <= figures
    run_dirs = list((clone / "runs" / "smoke").glob("*__seed0"))
    assert len(run_dirs) == 63
    assert all((d / "version_0" / "figures" / "parity.png").is_file() for d in run_dirs)
    assert (clone / "mlruns" / "mlflow.db").is_file()
    ensembles = pd.read_csv(results / "ensembles.csv")  # every cell exported as a three-member ensemble
    assert (
        len(ensembles) == 63
        and (ensembles["members"] == 3).all()
        and (results / "figures" / "calibration.png").is_file()
    )
    assert all((clone / folder / "ensemble.json").is_file() for folder in ensembles["folder"])
    shutil.rmtree(clone / "data", ignore_errors=True)
