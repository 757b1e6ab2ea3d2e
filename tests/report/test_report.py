"""framer.report on synthetic run directories (no training)."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fake_runs import make_run, make_runs
from matplotlib.image import imread

from framer import plots, report, reproduce
from framer.report import PaperTable, RunKey
from framer.rundir import RunDir, RunRoot


@pytest.fixture(scope="module")
def paper() -> PaperTable:
    return PaperTable.load()


def test_paper_results_match_the_paper(paper):
    assert [c.key for c in paper.columns] == [
        "mp/e_form", "mp/gap", "mp/bulk_modulus", "mp/shear_modulus",
        "jarvis/formation_energy", "jarvis/total_energy", "jarvis/opt_bandgap", "jarvis/mbj_bandgap", "jarvis/ehull",
    ]  # fmt: skip
    assert len(paper.models) == 7
    assert paper.mae["crystalframer"]["mp/e_form"] == 0.0172
    assert paper.mae["crystalformer"]["jarvis/mbj_bandgap"] == 0.274
    assert paper.mae["crystalframer-lightweight"]["mp/shear_modulus"] == 0.0654


def test_table_has_every_model_and_column_and_marks_missing(tmp_path, paper):
    missing = RunKey("crystalframer-pca", "jarvis/ehull", 1)
    gone = {RunKey("crystalframer-static", "mp/gap", s) for s in (0, 1)}
    make_runs(tmp_path / "runs", paper, seeds=(0, 1), skip={missing} | gone)
    paths = report.write_report(tmp_path / "runs", tmp_path / "out", figures=False)

    table = pd.read_csv(paths["csv"])
    assert list(table["model"]) == list(paper.models)
    for col in paper.columns:
        for stat in ("mae", "std", "n", "paper", "delta"):
            assert f"{col.key}:{stat}" in table.columns
    row = table.set_index("model").loc["crystalframer-pca"]
    assert row["jarvis/ehull:n"] == 1 and row["jarvis/ehull:n_expected"] == 2
    assert math.isnan(table.set_index("model").loc["crystalframer-static", "mp/gap:mae"])

    md = paths["md"].read_text()
    assert "**missing** (0/2)" in md and "(1/2 seeds)" in md
    for label in paper.models.values():
        assert label in md
    assert "SMOKE" not in md

    runs = pd.read_csv(paths["runs"])
    assert len(runs) == 7 * 9 * 2
    assert (runs["status"] == "missing").sum() == 3


def test_mean_std_and_delta(tmp_path, paper):
    root = tmp_path / "runs"
    for seed, mae in [(0, 0.02), (1, 0.03), (2, 0.04)]:
        make_run(root, RunKey("crystalformer", "mp/e_form", seed), mae)
    results = report.collect(root, paper)
    summary = report.summarize(results, paper).set_index(["model", "column"])
    cell = summary.loc[("crystalformer", "mp/e_form")]
    assert cell["n"] == 3
    assert cell["mae"] == pytest.approx(0.03)
    assert cell["std"] == pytest.approx(0.01)
    assert cell["delta"] == pytest.approx(0.03 - 0.0186)
    # without a manifest, every model x column is still expected: 7 x 9 x 3 seeds
    assert len(results) == 7 * 9 * 3


def pixels(path: Path) -> np.ndarray:
    """A PNG decoded to an (height, width, channels) array."""
    return imread(path)


def test_smoke_banner_and_figures(tmp_path, paper):
    make_runs(tmp_path / "runs", paper, seeds=(0,), smoke=True, models=["crystalformer", "crystalframer"])
    paths = report.write_report(tmp_path / "runs", tmp_path / "out")
    assert "not paper numbers" in paths["md"].read_text()
    assert pd.read_csv(paths["csv"])["smoke"].all()
    frames = pixels(paths["frames"])
    assert frames.shape[:2] == (round(5.6 * plots.DPI), round(1.25 * len(paper.columns) * plots.DPI))
    for kind in ("parity", "errors", "curves"):  # a 2 x 5 grid of 3-inch panels (+0.5 inch for the title)
        assert pixels(tmp_path / "out" / "figures" / f"{kind}_crystalframer.png").shape[:2] == (780, 1800)
    summary = report.summarize(report.collect(tmp_path / "runs", paper), paper)
    summary.loc[summary["model"] == "crystalframer", "mae"] *= 0.5  # a different input draws a different chart
    other = plots.frame_comparison(summary, paper, tmp_path / "other.png")
    assert not np.array_equal(pixels(other), frames)


def test_cli_entry_point(tmp_path, paper):
    make_runs(tmp_path / "runs", paper, seeds=(0,), skip={RunKey("crystalformer", "mp/e_form", 0)})
    report.main(["--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--no-figures"])
    assert (tmp_path / "out" / "table.md").is_file()


def test_fmt():
    assert report.fmt(0.01723) == "0.0172"
    assert report.fmt(0.185) == "0.185"
    assert report.fmt(1.5) == "1.50"
    assert report.fmt(float("nan")) == "—"
    assert report.fmt(0.00081, 4, sign=True) == "+0.0008"


def markdown_rows(md: str) -> list[list[str]]:
    """The cells of the first markdown table in ``md`` (header first, the ``|:---|`` rule dropped)."""
    lines = [line for line in md.splitlines() if line.startswith("|")]
    table = lines[: next((i for i, line in enumerate(lines[1:], 1) if line.startswith("| Method")), len(lines))]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in table if not line.startswith("|:")]


def test_table_gives_ours_paper_and_delta_their_own_rows_at_the_papers_precision(tmp_path, paper):
    root = tmp_path / "runs"
    make_run(root, RunKey("crystalformer", "mp/e_form", 0), 3.2912345)  # paper prints 0.0186: 4 decimals
    make_run(root, RunKey("crystalformer", "jarvis/total_energy", 0), 0.03)  # paper prints 0.0320: 4 decimals
    for seed, mae in [(0, 0.2), (1, 0.25)]:  # paper prints 0.198: 3 decimals
        make_run(root, RunKey("crystalformer", "mp/gap", seed), mae)
    rows = markdown_rows(report.write_report(root, tmp_path / "out", figures=False)["md"].read_text())
    header, body = rows[0], rows[1:]
    assert header[:3] == ["Model", "MAE", "MP E form (eV/atom)"] and len(header) == 2 + len(paper.columns)
    assert [row[1] for row in body] == ["ours", "paper", "Δ"] * len(paper.models)
    assert [row[0] for row in body[::3]] == list(paper.models.values()) and not any(row[0] for row in body[1::3])
    ours, ref, delta = (dict(zip(header, row)) for row in body[:3])  # Crystalformer
    assert (ours["MP E form (eV/atom)"], ref["MP E form (eV/atom)"], delta["MP E form (eV/atom)"]) == (
        "3.2912 (1/2 seeds)", "0.0186", "+3.2726"
    )  # fmt: skip
    assert (ours["JARVIS E total (eV/atom)"], ref["JARVIS E total (eV/atom)"]) == ("0.0300 (1/2 seeds)", "0.0320")
    assert delta["JARVIS E total (eV/atom)"] == "-0.0020"
    assert (ours["MP Bandgap (eV)"], delta["MP Bandgap (eV)"]) == ("0.225 ± 0.035", "+0.027")
    assert ours["MP Bulk mod. (log(GPa))"].startswith("**missing**") and delta["MP Bulk mod. (log(GPa))"] == "—"
    assert ref["MP Bulk mod. (log(GPa))"] == "0.0377"


def test_plots_command_line(tmp_path, paper):
    sizes = {"parity": (504, 504), "errors": (408, 576), "learning_curves": (432, 624)}  # figsize x DPI
    images = {}
    for seed, mae in ((0, 0.05), (1, 0.2)):
        run = make_run(tmp_path / "runs", RunKey("crystalformer", "mp/e_form", seed), mae, epochs=3 + seed)
        plots.main(["run", str(run)])
        images[seed] = {name: pixels(run / "figures" / f"{name}.png") for name in sizes}
    for name, size in sizes.items():
        assert images[0][name].shape[:2] == images[1][name].shape[:2] == size, name
        assert not np.array_equal(images[0][name], images[1][name]), name  # drawn from the data


def test_split_mismatch_is_flagged(tmp_path, paper):
    root = tmp_path / "runs"
    for seed, split in [(0, "a"), (1, "b")]:
        run = make_run(root, RunKey("crystalformer", "mp/e_form", seed), 0.02)
        (run / "run.json").write_text(json.dumps({"splits": {"train": split, "val": "v", "test": "t"}}))
    paths = report.write_report(root, tmp_path / "out", figures=False)
    assert "Split mismatch" in paths["md"].read_text()
    assert pd.read_csv(paths["runs"]).dropna(subset=["splits"])["splits"].nunique() == 2


def test_report_and_manifest_record_framers_commit_from_another_directory(tmp_path, paper, monkeypatch):
    """The commit is framer's checkout's, not the current directory's (here: not a git checkout at all)."""
    repo = Path(report.__file__).resolve().parents[1]
    git = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    if git.returncode != 0:
        pytest.skip("framer is not a git checkout here")
    make_runs(tmp_path / "runs", paper, seeds=(0,), models=["crystalformer"])
    monkeypatch.chdir(tmp_path)
    paths = report.write_report("runs", "out", figures=False)
    assert f"at git {git.stdout.strip()}" in paths["md"].read_text()
    manifest = reproduce.Manifest.load(reproduce.MANIFESTS["smoke"], paper)
    manifest.runs_dir, manifest.models = tmp_path / "reproduce", ["crystalformer"]
    written = reproduce.write_manifest(manifest, reproduce.plan(manifest, paper))
    assert json.loads(written.read_text())["git"] == git.stdout.strip()


def test_results_come_from_the_version_directory_never_from_a_later_evaluation(tmp_path, paper):
    """``test/<n>/`` and ``predict/<n>/`` of a run (framer.cli test/predict) write newer files of the same names; the
    run's results are those of its version directory."""
    root = tmp_path / "runs"
    key = RunKey("crystalformer", "mp/e_form", 0)
    run = make_run(root, key, mae=0.05)
    evaluation = make_run(root / key.dirname / "version_0" / "test", RunKey("x", "mp/e_form", 0), mae=9.0)
    (run / "predict" / "0").mkdir(parents=True)
    (run / "predict" / "0" / "predictions.csv").write_text("id,prediction\nonly,1.0\n")
    unfinished = RunKey("crystalformer", "mp/gap", 0)
    make_run(root, unfinished, mae=0.1, finished=False)  # its version_0 has no results, its test/0 has
    make_run(root / unfinished.dirname / "version_0" / "test", RunKey("y", "mp/gap", 0), mae=7.0)
    assert (evaluation / "results.json").stat().st_mtime >= (run / "results.json").stat().st_mtime

    results = {r.key: r for r in report.collect(root, paper)}
    assert results[key].status == "finished" and results[key].test_mae == pytest.approx(0.05)
    assert results[key].run == RunDir(run) and results[key].n_test == 12
    assert results[unfinished].status == "incomplete" and math.isnan(results[unfinished].test_mae)
    assert RunRoot(root / key.dirname).latest_finished() == RunDir(run)


def test_runs_made_before_results_json_are_read_from_metrics_json(tmp_path, paper):
    root = tmp_path / "runs"
    old = make_run(root, RunKey("crystalformer", "mp/e_form", 0), mae=0.05, results="metrics.json")
    assert not (old / "results.json").exists() and RunDir(old).finished
    (result,) = [r for r in report.collect(root, paper) if r.status == "finished"]
    assert result.test_mae == pytest.approx(0.05) and result.test_mae_best == pytest.approx(0.055)
    (old / "results.json").write_text(json.dumps({"metrics": {"test/mae": 0.07}}))  # the new name wins
    assert RunDir(old).metric("test/mae") == pytest.approx(0.07)
