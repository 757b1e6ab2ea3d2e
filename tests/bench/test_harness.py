"""The benchmark harness end to end on tiny models (no timing assertions: numbers are only checked to exist)."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path

import pytest
from matplotlib.image import imread

from bench.speed import batches, report, runner, targets
from bench.speed.__main__ import main, override, preset_name
from framer.provenance import git_commit

TINY = {
    "num_layers": 1,
    "model_dim": 8,
    "num_heads": 2,
    "ff_dim": 8,
    "dist_basis": 4,
    "angle_basis": 2,
    "head_dim": 4,
}
TINY_ARGS = [arg for key, value in TINY.items() for arg in ("--override", f"{key}={value}")]
STAGE_KEYS = {"wall_s", "cpu_s", "min_wall_s", "repeats", "peak_mib", "crystals_per_s", "ms_per_crystal", "atoms"}
PRESETS = ["crystalformer", "crystalframer", "crystalframer-lightweight"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> tuple[dict, str, Path]:
    """A --quick-like run in this process: three tiny presets, 2 reference crystals, MP-like batch 3, sweep 2/4."""
    out = tmp_path_factory.mktemp("bench")
    argv = ["--quick", "--in-process", "--presets", *PRESETS, "--ref-crystals", "2", "--mp-batch", "3"]
    argv += ["--mp-train-batch", "2", "--sweep-atoms", "2", "4", "--sweep-presets", "crystalformer", "--rounds", "2"]
    argv += [
        "--warmup",
        "0",
        "--repeats",
        "1",
        "--batch1-repeats",
        "1",
        "--out",
        str(out),
        "--name",
        "tiny",
        *TINY_ARGS,
    ]
    assert main(argv) == 0
    return json.loads((out / "tiny.json").read_text()), (out / "tiny.md").read_text(), out


def test_results_have_every_expected_key(quick_run) -> None:
    results, _, out = quick_run
    assert {"schema", "system", "plan", "batches", "presets", "sweep", "targets", "reference", "duration_s"} <= set(
        results
    )
    assert {"host", "date", "cpu", "torch", "torch_threads", "git_commit", "git_dirty"} <= set(results["system"])
    assert results["batches"]["ref"]["crystals"] == 2 and results["batches"]["mp"]["crystals"] == 3
    assert list(results["presets"]) == PRESETS
    for preset, cases in results["presets"].items():
        assert cases["ref"]["ok"] and cases["mp"]["ok"], preset
        assert set(cases["ref"]["stages"]) == {"infer_b1", "infer", "train"}
        assert set(cases["mp"]["stages"]) == {"infer", "train"}
        for case in cases.values():
            for record in case["stages"].values():
                assert set(record) >= STAGE_KEYS and math.isfinite(record["wall_s"]), (preset, record)
        assert cases["mp"]["stages"]["infer"]["crystals"] == 3 and cases["mp"]["stages"]["train"]["crystals"] == 2
        assert len(cases["ref"]["stages"]["infer"]["outputs"]) == 2
        assert len(cases["ref"]["rounds"]) == 2 and cases["ref"]["round_chosen"] in (0, 1)
        assert "rounds" not in cases["mp"]
        assert cases["ref"]["graph"]["images"] > 0
    points = results["sweep"]["crystalformer"]
    assert [p["atoms"] for p in points] == [2, 4]
    assert all(p["ok"] and p["images"] > 0 and p["atoms2_box_images"] >= p["atom_pairs"] for p in points)
    paired = results["paired"]  # interleaved steps in one process: three rounds (quick), ratios within each round
    assert paired["ok"] and paired["base"] == "crystalformer" and list(paired["summary"]) == PRESETS
    for preset in PRESETS:
        assert len(paired["train_wall_s"][preset]) == len(paired["summary"][preset]["ratio_wall"]) == 3
    assert paired["summary"]["crystalformer"]["ratio_wall"] == [1.0, 1.0, 1.0]
    framer = paired["summary"]["crystalframer"]
    expected = [a / b for a, b in zip(paired["train_wall_s"]["crystalframer"], paired["train_wall_s"]["crystalformer"])]
    assert framer["ratio_wall"] == pytest.approx(expected) and framer["median_ratio_wall"] == sorted(expected)[1]
    keys = {row["key"] for row in results["targets"]}
    assert {"crystalformer_train_step", "crystalformer_ms_per_material_b1", "crystalframer_throughput_over_v1"} <= keys
    assert "crystalframer_step_over_crystalformer_paired" in keys
    height, width, _ = imread(out / "tiny.png").shape  # a readable image, not just some bytes
    assert height > 100 and width > 100
    assert not list(out.glob(".*"))  # no temporary files left behind


def test_markdown_has_a_row_per_preset_and_the_targets(quick_run) -> None:
    results, md, _ = quick_run
    for heading in (
        "## Targets (bench/speed/targets.yaml)",
        "## Presets",
        "## Interleaved training steps",
        "## Scaling sweep",
    ):
        assert heading in md
    presets_table = md.split("## Presets")[1].split("##")[0]
    for preset in PRESETS:
        assert f"| {preset} |" in presets_table
    assert "Crystalformer training step, reference batch" in md
    assert "![scaling sweep](tiny.png)" in md
    assert md == report.markdown(results, "tiny.png")


def test_a_case_in_a_subprocess_measures_this_checkout(tmp_path) -> None:
    plan = runner.Plan.quick_plan(overrides=TINY, warmup=0, repeats=1, timeout=120)
    measurer = runner.Measurer(plan, tmp_path, log=lambda line: None)
    result = measurer.run(
        {"preset": "crystalframer", "stages": runner.sweep_stages(plan)}, [batches.sweep_structure(3)]
    )
    assert result["ok"], result
    assert Path(result["framer_root"]) == runner.CURRENT_ROOT
    train = result["stages"]["train"]
    assert "ru_maxrss" in result["memory_method"] and 0 < train["peak_mib"] <= train["process_peak_mib"]
    assert result["graph"]["edges"] == 9


def test_worker_failures_are_recorded_not_raised(tmp_path) -> None:
    plan = runner.Plan.quick_plan(overrides={"no_such_argument": 1}, timeout=120)
    result = runner.Measurer(plan, tmp_path, log=lambda line: None).run(
        {"preset": "crystalformer", "stages": runner.sweep_stages(plan)}, [batches.sweep_structure(2)]
    )
    assert not result["ok"] and "no_such_argument" in result["error"]


def test_git_worktree_is_removed_afterwards() -> None:
    with runner.git_worktree("HEAD") as (commit, path):
        assert len(commit) == 40 and (path / "framer" / "models" / "__init__.py").exists()
    assert not path.exists()


def test_report_handles_missing_and_failed_cases() -> None:
    failed = {"ok": False, "error": "timeout after 5 s", "timeout": True}
    results = {
        "system": {"host": "h", "date": "d", "torch": "t", "torch_threads": 1, "cpu": "c", "cpus_available": 1,
                   "git_commit": None, "git_dirty": None},
        "plan": runner.asdict(runner.Plan()),
        "batches": {},
        "presets": {"crystalformer": {"ref": failed}},
        "sweep": {"crystalformer": [{"atoms": 8, "atom_pairs": 64, "atoms2_box_images": 8000, **failed}]},
        "against": {"rev": "v1", "error": "CalledProcessError: unknown revision"},
    }  # fmt: skip
    md = report.markdown(results)
    assert "timeout" in md and "## Failures" in md and "Could not measure v1" in md
    rows = targets.evaluate(results)
    assert all(row["met"] is None for row in rows if row["key"] != "crystalformer_large_cell_trains")


def test_cli_helpers() -> None:
    assert preset_name("lightweight") == "crystalframer-lightweight"
    assert preset_name("weighted_pca") == "crystalframer-weighted_pca"
    assert preset_name("crystalformer") == "crystalformer"
    assert override("num_layers=2") == ("num_layers", 2) and override("frame=max") == ("frame", "max")


def _stage_record(wall: float, cpu: float, crystals: int = 16, **extra) -> dict:
    return {"kind": "train", "crystals": crystals, "wall_s": wall, "cpu_s": cpu, "crystals_per_s": crystals / wall,
            "ms_per_crystal": 1000 * wall / crystals, "cpu_ms_per_crystal": 1000 * cpu / crystals, "peak_mib": 100.0,
            **extra}  # fmt: skip


def test_targets_compute_ratios_from_given_numbers() -> None:
    """Made-up figures in, the issue's ratios out (wall and CPU-second bases), met judged by the target's direction."""
    ref = lambda train, b1=None, outputs=None: {  # noqa: E731
        "ok": True,
        "stages": {
            "train": train,
            **({"infer_b1": b1} if b1 else {}),
            **({"infer": {**_stage_record(1.0, 1.0), "outputs": outputs}} if outputs else {}),
        },
    }
    results = {
        "presets": {
            "crystalformer": {"ref": ref(_stage_record(1.0, 1.5), _stage_record(0.02, 0.03, crystals=1), [1.0, 2.0])},
            "crystalframer": {"ref": ref(_stage_record(2.0, 1.8), outputs=[1.0, 2.0 + 1e-5])},
            "crystalframer-lightweight": {"ref": ref(_stage_record(1.1, 1.5))},
        },
        "against": {"rev": "v1", "presets": {"crystalframer": {"ref": ref(_stage_record(8.0, 3.6))}}},
        "paired": runner.summarize_paired(
            {
                "ok": True,
                "train_wall_s": {"crystalformer": [1.0, 2.0, 1.0], "crystalframer": [1.4, 3.2, 2.0]},
                "train_cpu_s": {"crystalformer": [1.0, 1.0, 1.0], "crystalframer": [1.3, 1.4, 1.5]},
            },
            ["crystalformer", "crystalframer"],
        ),
        "sweep": {
            "crystalformer": [
                {"atoms": n, "atom_pairs": n * n, "atoms2_box_images": 1000 * n * n,
                 "stages": {"train": {"wall_s": 1.0, "cpu_s": 2.0, "peak_mib": 0.5 * n * n}}}
                for n in (64, 128, 256, 512)
            ]
        },
    }  # fmt: skip
    rows = {row["key"]: row for row in targets.evaluate(results)}
    former = rows["crystalformer_train_step"]
    assert (former["value"], former["target"], former["value_cpu"]) == (1.0, 2.1, 1.5)
    assert former["ratio"] == pytest.approx(1.0 / 2.1) and former["met"] and former["met_cpu"]
    b1 = rows["crystalformer_ms_per_material_b1"]
    assert b1["value"] == pytest.approx(20.0) and b1["value_cpu"] == pytest.approx(30.0)
    assert b1["target"] == pytest.approx(80 / 3) and b1["met"] and b1["ratio_cpu"] == pytest.approx(30 / (80 / 3))
    framer = rows["crystalframer_step_over_crystalformer"]
    assert framer["value"] == pytest.approx(2.0) and framer["ratio"] == pytest.approx(2.0 / 1.5) and not framer["met"]
    assert framer["value_cpu"] == pytest.approx(1.2) and framer["met_cpu"]
    light = rows["crystalframer-lightweight_step_over_crystalformer"]
    assert light["value"] == pytest.approx(1.1) and light["met"] and light["value_cpu"] == pytest.approx(1.0)
    v1 = rows["crystalframer_throughput_over_v1"]
    assert (
        v1["comparison"] == ">="
        and v1["value"] == pytest.approx(4.0)
        and v1["ratio"] == pytest.approx(2.0)
        and v1["met"]
    )
    assert v1["value_cpu"] == pytest.approx(2.0) and v1["met_cpu"]
    assert rows["crystalformer_outputs_vs_v1"]["value"] is None  # v1 has no recorded crystalformer outputs
    assert rows["crystalframer_outputs_vs_v1"]["figure"] == "crystalframer outputs vs v1 (max rel. diff)"  # the rev
    paired = rows["crystalframer_step_over_crystalformer_paired"]  # per-round ratios 1.4, 1.6, 2.0: median 1.6
    assert paired["value"] == pytest.approx(1.6) and not paired["met"] and "1.40-2.00" in paired["note"]
    assert paired["value_cpu"] == pytest.approx(1.4) and paired["met_cpu"]
    assert "crystalframer-lightweight_step_over_crystalformer_paired" not in rows  # not measured
    exponent = rows["crystalformer_memory_exponent"]
    assert exponent["value"] == pytest.approx(1.0) and exponent["met"]  # peak exactly proportional
    large = rows["crystalformer_large_cell_trains"]
    assert large["met"] and large["value"] == 1.0 and "512" in large["figure"]
    md = report.markdown(
        {
            **results,
            "system": {"host": "h", "date": "d", "torch": "t", "torch_threads": 1, "cpu": "c", "cpus_available": 1},
            "plan": runner.asdict(runner.Plan(threads=1)),
        }
    )
    assert "| 2.00 x | 1.20 x | ≤ 1.50 x | 1.33 | 0.800 | **no** | yes |" in md


def test_memory_exponent_detects_superlinear_growth() -> None:
    points = [
        {"atoms": n, "atoms2_box_images": n * n, "stages": {"train": {"wall_s": 1.0, "peak_mib": (n * n) ** 1.5}}}
        for n in (128, 256, 512)
    ]
    assert targets.memory_exponent(points, min_atoms=128) == pytest.approx(1.5)
    assert targets.memory_exponent(points[:1], min_atoms=128) is None


def _bench_worktrees() -> set[str]:
    """The harness's registered worktrees (other worktrees of the repository may come and go meanwhile)."""
    listing = subprocess.run(
        ["git", "-C", str(runner.CURRENT_ROOT), "worktree", "list", "--porcelain"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {line for line in listing.splitlines() if line.startswith("worktree ") and "framer-bench-worktree-" in line}


def test_against_head_measures_a_worktree(tmp_path) -> None:
    """--against HEAD on a tiny plan: the worker imports framer from a temporary worktree, removed afterwards."""
    plan = runner.Plan.quick_plan(
        overrides=TINY, warmup=0, repeats=1, batch1_repeats=1, ref_crystals=1, against="HEAD",
        against_presets=["crystalformer"], presets=[], cases=[], paired=False, sweep=False, timeout=120,
    )  # fmt: skip
    before = _bench_worktrees()
    results = runner.run(plan, log=lambda line: None)
    section = results["against"]
    assert section["commit"] == git_commit()["commit"] and "error" not in section
    result = section["presets"]["crystalformer"]["ref"]
    assert result["ok"], result
    root = Path(result["framer_root"])
    assert root != runner.CURRENT_ROOT and "framer-bench-worktree-" in str(root) and not root.exists()
    assert set(result["stages"]) == {"infer_b1", "infer", "train"}
    assert _bench_worktrees() == before


def test_a_measured_checkout_with_its_own_bench_package_runs_this_harness(tmp_path) -> None:
    """Another checkout's framer is measured even when that checkout has a ``bench`` package without ``speed``
    (as every revision before the benchmark moved does): the worker must not import ``bench`` from there."""
    other = tmp_path / "other-checkout"
    shutil.copytree(runner.CURRENT_ROOT / "framer", other / "framer", ignore=shutil.ignore_patterns("__pycache__"))
    (other / "bench").mkdir()
    (other / "bench" / "__init__.py").write_text("")
    plan = runner.Plan.quick_plan(overrides=TINY, warmup=0, repeats=1, timeout=120)
    measurer = runner.Measurer(plan, tmp_path, log=lambda line: None)
    stages = runner.sweep_stages(plan)
    result = measurer.run({"preset": "crystalformer", "stages": stages}, [batches.sweep_structure(2)], root=other)
    assert result["ok"], result
    assert Path(result["framer_root"]) == other.resolve()


def test_median_round_keeps_a_whole_round() -> None:
    def result(wall: float, ok: bool = True) -> dict:
        return {"ok": ok, "stages": {"train": {"wall_s": wall, "cpu_s": wall / 2}}, "tag": wall}

    chosen = runner.median_round([result(3.0), result(1.0), result(2.0)])
    assert chosen["tag"] == 2.0 and chosen["round_chosen"] == 2
    assert [r["train_wall_s"] for r in chosen["rounds"]] == [3.0, 1.0, 2.0]
    assert runner.median_round([result(5.0), result(1.0, ok=False)])["tag"] == 5.0  # failures sort last
    assert runner.median_round([result(4.0)]) == result(4.0)
