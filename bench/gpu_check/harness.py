"""How parts run: their settings, their record (status, reason, timing, figures), budgets and isolation.

A part is a function ``part(ctx: PartContext) -> None`` that fills ``ctx.figures``. It may

- raise :class:`Skipped` (status "skipped", with the reason),
- call ``ctx.fail(what, error)`` for a sub-check that failed and go on (status "failed", reasons joined),
- raise anything else (status "failed", the exception's one-line text; the traceback is kept in the JSON).

Each part has a time budget: parts check ``ctx.left()`` between sub-steps and stop early, noting what they left
out. On CUDA every part runs in a child process (``--isolate auto``), so a sticky CUDA error, a fragmented
allocator or a hang cannot spoil the next part; the child writes its record after every ``ctx.save()`` and is
killed after its budget plus a grace period, and the parent keeps whatever it had saved.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
CHILD_GRACE_S = 20.0  # start-up (imports) and clean-up on top of a part's budget in a child process
#: QUICK's network: each preset keeps its frame and angle settings, at the size of conf/debug/tiny_model.yaml
TINY_NETWORK = {"num_layers": 1, "model_dim": 16, "num_heads": 2, "ff_dim": 32, "head_dim": 16, "dist_basis": 16}


class Skipped(Exception):
    """The part cannot run here; the message says why (e.g. "needs CUDA", "needs pymatgen")."""


@dataclass
class CheckConfig:
    """Everything a part needs to know about the run (plain data: it travels to child processes as JSON)."""

    device: str = "cuda"
    quick: bool = False
    threads: int | None = None
    batch_size: int = 128  # speed and memory
    speed_batches: int = 4  # distinct batches per distribution: one warm-up, the rest timed
    infer_crystals: int = 32  # single-crystal inferences (the paper's test/material uses batch 1)
    reference_crystals: int = 16
    loader_crystals: int = 4096
    loader_batches: int = 24
    limit_crystals: int | None = None  # None: as many of the JARVIS-like epoch as the budget allows
    largest_cell_start: int = 64
    largest_cell_cap: int = 16384
    compile_steps: int = 6
    compile_presets: tuple[str, ...] = ("crystalformer", "crystalframer")
    memory_presets: tuple[str, ...] | None = None  # None: every preset
    fit_crystals: int = 400
    budget_scale: float = 1.0
    model_overrides: dict[str, int] = field(default_factory=dict)  # QUICK: a tiny network, same frames

    @classmethod
    def make(cls, device: str, quick: bool, **overrides: Any) -> CheckConfig:
        """The full sizes, or tiny ones for ``quick`` (every part in seconds on a 2-core CPU)."""
        config = cls(device=device, quick=quick)
        if quick:
            config = dataclasses.replace(
                config,
                threads=1,  # a shared CPU: several OpenMP threads wait for each other (bench/README.md)
                batch_size=4,
                speed_batches=2,
                infer_crystals=2,
                reference_crystals=3,
                loader_crystals=48,
                loader_batches=4,
                limit_crystals=8,
                largest_cell_start=2,
                largest_cell_cap=8,
                compile_steps=3,
                compile_presets=("crystalformer",),
                memory_presets=("crystalformer", "crystalframer", "crystalframer-lightweight"),
                fit_crystals=24,
                model_overrides=dict(TINY_NETWORK),
            )
        return dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})


@dataclass
class PartContext:
    """What a running part sees: the settings, earlier parts' records, its deadline and its figures."""

    config: CheckConfig
    previous: dict[str, dict]
    deadline: float  # time.monotonic()
    budget_s: float = 0.0
    figures: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    save_to: Path | None = None

    @property
    def device(self):
        import torch

        return torch.device(self.config.device)

    def left(self) -> float:
        """Seconds left of this part's budget."""
        return self.deadline - time.monotonic()

    def fail(self, what: str, error: BaseException | str) -> str:
        """Record a failed sub-check (the part goes on); returns the one-line reason."""
        reason = f"{what}: {one_line(error)}"
        self.failures.append(reason)
        self.save()
        return reason

    def save(self) -> None:
        """Write the record so far (child processes only: the parent keeps it if the child is killed)."""
        if self.save_to is not None:
            record = {"status": "running", "figures": self.figures, "failures": self.failures}
            _write_json(self.save_to, record)


@dataclass(frozen=True)
class Part:
    """A registered part: its function, budget (seconds, full run) and the packages it needs beyond torch/numpy."""

    name: str
    title: str
    run: Callable[[PartContext], None]
    budget_s: float
    quick_budget_s: float
    needs: tuple[str, ...] = ()

    def budget(self, config: CheckConfig) -> float:
        return (self.quick_budget_s if config.quick else self.budget_s) * config.budget_scale


def one_line(error: BaseException | str, limit: int = 300) -> str:
    """``Type: message`` on one line, shortened to ``limit`` characters."""
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def missing_packages(names: tuple[str, ...]) -> list[str]:
    """The importable-package names among ``names`` that this interpreter cannot import."""
    missing = []
    for name in names:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a blocked or broken package counts as missing
            found = False
        if not found:
            missing.append(name)
    return missing


def run_part(part: Part, config: CheckConfig, previous: dict[str, dict], isolate: bool) -> dict:
    """Run one part and return its record: status, reason, seconds, budget and figures."""
    budget = part.budget(config)
    start = time.monotonic()
    missing = missing_packages(part.needs)
    if missing:
        record = {"status": "skipped", "reason": f"needs {', '.join(missing)}", "figures": {}}
    elif isolate:
        record = _run_in_child(part, config, previous, budget)
    else:
        record = _run_here(part, config, previous, start + budget)
    record.update(seconds=round(time.monotonic() - start, 3), budget_s=round(budget, 1))
    return {"title": part.title, **record}


def _run_here(part: Part, config: CheckConfig, previous: dict[str, dict], deadline: float, save_to=None) -> dict:
    ctx = PartContext(config, previous, deadline, part.budget(config), save_to=save_to)
    try:
        part.run(ctx)
    except Skipped as skip:
        return {"status": "skipped", "reason": str(skip), "figures": ctx.figures}
    except Exception as error:  # recorded, and the check goes on
        reasons = [*ctx.failures, one_line(error)]
        return {
            "status": "failed",
            "reason": "; ".join(reasons),
            "figures": ctx.figures,
            "traceback": traceback.format_exc(limit=12)[-4000:],
        }
    if ctx.failures:
        return {"status": "failed", "reason": "; ".join(ctx.failures), "figures": ctx.figures}
    return {"status": "ok", "reason": "", "figures": ctx.figures}


def _run_in_child(part: Part, config: CheckConfig, previous: dict[str, dict], budget: float) -> dict:
    """Run the part in ``python -m bench.gpu_check --child`` with a hard timeout; keep what it saved."""
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch:
        spec, result = Path(scratch) / "spec.json", Path(scratch) / "result.json"
        _write_json(spec, {"part": part.name, "config": dataclasses.asdict(config), "previous": previous})
        command = [sys.executable, "-m", "bench.gpu_check", "--child", str(spec), str(result)]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        try:
            done = subprocess.run(
                command, cwd=REPO, env=env, capture_output=True, text=True, timeout=budget + CHILD_GRACE_S
            )
            problem = None if done.returncode == 0 else f"child process exited with code {done.returncode}"
            stderr = done.stderr
        except subprocess.TimeoutExpired as timeout:
            problem = f"killed after {budget + CHILD_GRACE_S:.0f} s (budget {budget:.0f} s + grace)"
            stderr = timeout.stderr.decode(errors="replace") if isinstance(timeout.stderr, bytes) else timeout.stderr
        record = json.loads(result.read_text()) if result.exists() else {"figures": {}, "failures": []}
    if problem or record.get("status") == "running":
        reasons = [*record.get("failures", []), problem or "child process stopped before the part finished"]
        record = {"status": "failed", "reason": "; ".join(reasons), "figures": record.get("figures", {})}
        record["stderr_tail"] = (stderr or "")[-3000:]
    record.pop("failures", None)
    return record


def child_main(spec_path: str, result_path: str, parts: dict[str, Part]) -> int:
    """Entry point of a child process: run the part of ``spec_path`` and write its record to ``result_path``."""
    spec = json.loads(Path(spec_path).read_text())
    config = CheckConfig(**spec["config"])
    apply_threads(config)
    part = parts[spec["part"]]
    deadline = time.monotonic() + part.budget(config)
    record = _run_here(part, config, spec["previous"], deadline, save_to=Path(result_path))
    _write_json(Path(result_path), record)
    return 0


def apply_threads(config: CheckConfig) -> None:
    if config.threads:
        import torch

        torch.set_num_threads(config.threads)


def _write_json(path: Path, content: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(content, indent=1, default=str))
    os.replace(tmp, path)
