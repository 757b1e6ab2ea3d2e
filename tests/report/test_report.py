"""framer.report on synthetic run directories (no training)."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from fake_runs import make_run, make_runs

from framer import report
from framer.report import PaperTable, RunKey


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


def test_smoke_banner_and_figures(tmp_path, paper):
    make_runs(tmp_path / "runs", paper, seeds=(0,), smoke=True, models=["crystalformer", "crystalframer"])
    paths = report.write_report(tmp_path / "runs", tmp_path / "out")
    assert "not paper numbers" in paths["md"].read_text()
    assert pd.read_csv(paths["csv"])["smoke"].all()
    assert paths["frames"].stat().st_size > 10_000
    for kind in ("parity", "errors", "curves"):
        assert (tmp_path / "out" / "figures" / f"{kind}_crystalframer.png").is_file()


def test_cli_entry_point(tmp_path, paper):
    make_runs(tmp_path / "runs", paper, seeds=(0,), skip={RunKey("crystalformer", "mp/e_form", 0)})
    report.main(["--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--no-figures"])
    assert (tmp_path / "out" / "table.md").is_file()


def test_fmt():
    assert report.fmt(0.01723) == "0.0172"
    assert report.fmt(0.185) == "0.185"
    assert report.fmt(1.5) == "1.50"
    assert report.fmt(float("nan")) == "—"
    assert report.fmt_like(0.00081, 0.0172) == "+0.0008"


def test_plots_command_line(tmp_path, paper):
    from fake_runs import make_run

    from framer import plots

    run = make_run(tmp_path / "runs", RunKey("crystalformer", "mp/e_form", 0), 0.05)
    plots.main(["run", str(run)])
    for name in ("parity", "errors", "learning_curves"):
        assert (run / "figures" / f"{name}.png").stat().st_size > 5000


def test_split_mismatch_is_flagged(tmp_path, paper):
    import json

    root = tmp_path / "runs"
    for seed, split in [(0, "a"), (1, "b")]:
        run = make_run(root, RunKey("crystalformer", "mp/e_form", seed), 0.02)
        (run / "run.json").write_text(json.dumps({"splits": {"train": split, "val": "v", "test": "t"}}))
    paths = report.write_report(root, tmp_path / "out", figures=False)
    assert "Split mismatch" in paths["md"].read_text()
    assert pd.read_csv(paths["runs"]).dropna(subset=["splits"])["splits"].nunique() == 2
