"""The GPU check (issue 19) on the CPU: ``make gpu-check DEVICE=cpu QUICK=1`` here and on a simulated GPU image.

Nothing here asserts a time: the checks must run, record what they find part by part, and write their files.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
LEAN_IMAGE = Path(__file__).parent / "lean_image"  # sitecustomize.py: pymatgen, mlflow, ... look absent
#: parts that run on any CPU and must say "ok", here and on the lean image (their code needs torch, numpy, Lightning)
RUN_ON_CPU = ("environment", "correctness", "speed", "memory", "loader", "compile", "limit")
END_TO_END = ("cli_fit", "pytest_gpu")  # need jsonargparse, mlflow, pymatgen (and pytest): skipped on the image
PAPER_FIGURES = ("32.0", "74.0", "43.0", "6.60", "16.8", "15.2", "2.31", "1.34")
QUICK_NAME = f"{socket.gethostname().split('.')[0]}-gpu-quick"


def _start(command: list[str], pythonpath: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": pythonpath}
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def checks(tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess, Path]]:
    """Three quick checks started together (each mostly waits on its own subprocesses or one torch thread):
    ``make gpu-check DEVICE=cpu QUICK=1`` here, the same module run on the simulated GPU image (``PYTHONPATH``
    holding the blocker and ``.``, as on the lent machine), and two parts in child processes (``--isolate yes``)."""
    root = tmp_path_factory.mktemp("gpu-check")
    # budgets are caps, not targets: generous ones keep a loaded shared machine from cutting parts short
    module = [sys.executable, "-m", "bench.gpu_check", "--device", "cpu", "--quick", "--budget-scale", "4"]
    started = {
        "here": _start(
            [
                "make",
                "-s",
                "gpu-check",
                "DEVICE=cpu",
                "QUICK=1",
                f"GPU_CHECK_PY={sys.executable}",
                f"GPU_CHECK_ARGS=--out {root / 'here'} --budget-scale 4",
            ],
            os.environ.get("PYTHONPATH", ""),
        ),
        "image": _start([*module, "--out", str(root / "image")], f"{LEAN_IMAGE}{os.pathsep}."),
        "isolated": _start(
            [*module, "--only", "environment,limit", "--isolate", "yes", "--out", str(root / "isolated")], "."
        ),
    }
    done = {}
    for name, process in started.items():
        stdout, stderr = process.communicate(timeout=600)
        done[name] = (subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr), root / name)
    return done


def _results(checks, name: str, stem: str = QUICK_NAME) -> dict:
    result, out = checks[name]
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / f"{stem}.md").is_file() and (out / f"{stem}.json").is_file(), sorted(out.iterdir())
    return json.loads((out / f"{stem}.json").read_text())


def _assert_ran(parts: dict, names) -> None:
    for name in names:
        assert parts[name]["status"] == "ok", (name, parts[name].get("reason"), parts[name].get("traceback"))


def test_quick_check_runs_every_cpu_part_and_writes_both_files(checks) -> None:
    results = _results(checks, "here")
    parts = results["parts"]
    assert results["run"]["complete"] and results["run"]["device"] == "cpu"
    _assert_ran(parts, (*RUN_ON_CPU, *END_TO_END))
    assert parts["syncs"]["status"] == "skipped" and parts["syncs"]["reason"].startswith("needs CUDA")

    correctness = parts["correctness"]["figures"]["presets"]
    assert len(correctness) == 7 and all(row["float32"]["within"] for row in correctness.values())
    fit = parts["cli_fit"]["figures"]
    assert fit["checkpoint"] and fit["mlflow_run"] and fit["swa_steps"] > 0 and math.isfinite(fit["test_mae"])
    assert parts["pytest_gpu"]["figures"]["counts"].get("skipped", 0) >= 1  # the GPU tests skip without CUDA
    loader = parts["loader"]["figures"]
    assert loader["configured"]["crystals"] > 0 and loader["configured"]["headroom_over_fastest_model"] > 0

    # Mixed precision runs (issue 19 item 3): every preset under bf16 and fp16 autocast, with relative differences
    # against float32 (tests/models/test_mixed_precision.py bounds them).
    mixed = parts["mixed_precision"]
    assert mixed["status"] == "ok", mixed
    for row in mixed["figures"]["presets"].values():
        for mode in ("bf16-autocast", "fp16-autocast"):
            assert "error" not in row[mode] and 0 < row[mode]["outputs"] < 1e-1, row
        assert "skipped" in row["tf32"]  # a CUDA mode

    markdown = (checks["here"][1] / f"{QUICK_NAME}.md").read_text()
    summary = markdown.split("## Summary", 1)[1].split("\n## ", 1)[0]
    for figure in PAPER_FIGURES:  # the paper's efficiency figures stand beside ours
        assert f"| {figure} |" in summary, figure
    assert "Not GPU figures" in markdown


def test_quick_check_on_the_simulated_gpu_image(checks) -> None:
    """Only torch, Lightning, numpy (...) importable and framer from the checkout: every core part still runs."""
    results = _results(checks, "image")
    parts = results["parts"]
    environment = parts["environment"]["figures"]
    assert environment["framer_from_checkout"]
    assert {"pymatgen", "jsonargparse", "mlflow", "optuna", "jarvis", "matminer", "scipy"} <= set(
        environment["missing_optional"]
    )
    _assert_ran(parts, RUN_ON_CPU)
    assert parts["mixed_precision"]["status"] == "ok"  # see the test above
    assert parts["cli_fit"]["reason"] == "needs jsonargparse, mlflow, pymatgen, scipy"
    assert parts["pytest_gpu"]["reason"] == "needs pytest"
    assert all(parts[name]["status"] == "skipped" for name in END_TO_END)


def test_isolated_parts_report_through_their_child_process(checks) -> None:
    stem = QUICK_NAME
    parts = _results(checks, "isolated", stem)["parts"]
    assert list(parts) == ["environment", "limit"]
    _assert_ran(parts, parts)
    assert parts["environment"]["figures"]["framer_from_checkout"]
    limit = parts["limit"]["figures"]["presets"]
    assert limit["crystalformer"]["counted"]["angle_entries_per_layer"] == [0]
    for preset in ("crystalframer", "crystalframer-lightweight"):
        assert limit[preset]["counted"]["angle_entries_per_layer"][0] > 0
        assert limit[preset]["epoch"]["bound_s"] > 0 and limit[preset]["paper_over_bound"] > 1


def test_limit_counts_what_the_model_keeps() -> None:
    """With no pruning (image_tolerance 0) a layer keeps every image of every edge's box, and every non-self image
    gets one angle entry per head: the counters see exactly those numbers through the model's own code."""
    from bench.gpu_check import crystals, limit
    from framer.models import CrystalFramer

    records = crystals.reference_records(2)
    batch = crystals.collate_records(records)
    torch.manual_seed(0)
    model = CrystalFramer.preset(
        "crystalframer", num_layers=2, model_dim=16, num_heads=2, ff_dim=16, image_tolerance=0.0
    ).double()
    with limit.LayerCounter(2) as counter, torch.no_grad():
        model(batch.to(dtype=torch.float64))
    box = batch.image_box * 2 + 1
    images = int((batch.sizes**2 * box.prod(dim=1)).sum())
    assert counter.pairs == [images, images]
    assert counter.angle_entries == [2 * (images - batch.num_atoms)] * 2
    assert counter.edges == int((batch.sizes**2).sum()) and counter.atoms == batch.num_atoms
    with torch.no_grad():  # the wrapped functions are restored
        model(batch.to(dtype=torch.float64))
    assert counter.pairs == [images, images]


def test_bad_arguments_are_one_line_errors(capsys) -> None:
    from bench.gpu_check.__main__ import main

    assert main(["--device", "cpu", "--only", "nope"]) == 2
    assert capsys.readouterr().err.startswith("framer: error: unknown part(s) nope")
    if not torch.cuda.is_available():
        assert main(["--device", "cuda"]) == 2
        assert "torch.cuda.is_available() is False" in capsys.readouterr().err


def test_synchronisations_are_counted_per_code_location(monkeypatch) -> None:
    """The sync counter on the CPU: a module whose forward warns as CUDA's sync debug mode does, twice per step.

    (The debug mode itself needs CUDA; here it is a no-op and the warnings come from the module.)
    """
    import warnings

    from bench.gpu_check import speed, steps

    class Syncing(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(1))

        def forward(self, batch):
            for _ in range(2):
                warnings.warn("called a synchronizing CUDA operation", UserWarning, stacklevel=1)
            warnings.warn("an unrelated warning", UserWarning, stacklevel=1)
            return self.weight * batch

    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", lambda mode: None)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    model = Syncing()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    step = lambda: steps.training_step(model, optimizer, torch.ones(3), torch.zeros(3))  # noqa: E731
    with pytest.warns(UserWarning, match="unrelated"):  # other warnings still reach the user
        locations = speed._synchronisations(step, repeats=3)
    assert sum(locations.values()) == 6 and len(locations) == 1
    (where,) = locations
    assert where.startswith("bench/gpu_check/steps.py:") and "training_step" in where and "test_gpu_check.py" in where
