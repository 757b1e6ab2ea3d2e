"""Plan the measured cases, run each in a fresh subprocess (:mod:`bench.speed.worker`) and collect the results.

Cases per preset:

- ``ref``: the reference batch (:func:`~bench.speed.batches.reference_structures`). Stages: inference on its first
  crystal alone (batch 1, the reference's "80 ms per material"), inference on all 16, training steps on all 16.
- ``mp``: MEGNet-MP-like synthetic crystals. Stages: inference at ``mp_batch`` (128), training at ``mp_train_batch``.

Scaling sweep (``sweep_presets``): one synthetic cell of 8 ... 512 atoms per case; inference then training at batch 1,
with the model's count of kept (edge, image) pairs. A size that fails or times out skips the larger ones.

``against``: the same ``ref`` cases measured on another revision, checked out with ``git worktree`` into a temporary
directory whose ``framer`` the measuring subprocess imports: that checkout comes first on its ``PYTHONPATH``, and the
worker, run by path from this checkout, imports nothing of ``bench`` (an older checkout may hold another ``bench``
package), so the other revision's model runs under this harness. The ``ref`` cases run first, the older
revision's right after the current one's, ``rounds`` times round-robin (the round with the median training step is
kept): the targets compare these figures, and on a shared machine the load drifts over minutes. ``compile``: the
``ref`` case of ``compile_presets`` with ``torch.compile``'d models (failures and timeouts are recorded, not raised).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench.speed import batches, worker
from framer.geometry import image_box
from framer.provenance import git_commit

WORKER = Path(worker.__file__).resolve()
CURRENT_ROOT = Path(__file__).resolve().parents[2]  # the checkout this harness belongs to (its framer is measured)
ALL_PRESETS = (
    "crystalformer",
    "crystalframer",
    "crystalframer-lightweight",
    "crystalframer-pca",
    "crystalframer-lattice",
    "crystalframer-static",
    "crystalframer-weighted_pca",
)
CASES = ("ref", "mp")
PAIRED_PRESETS = ("crystalformer", "crystalframer", "crystalframer-lightweight")  # the first is the denominator
SWEEP_ATOMS = (8, 16, 32, 64, 128, 256, 512)
QUICK_SWEEP_ATOMS = (8, 16, 32, 64)


@dataclass
class Plan:
    """What to measure and how often (``quick()`` gives the few-minutes variant)."""

    presets: list[str] = field(default_factory=lambda: list(ALL_PRESETS))
    cases: list[str] = field(default_factory=lambda: list(CASES))
    ref_crystals: int = batches.REFERENCE_CRYSTALS  # fewer only in tests (the first crystals of the same draws)
    mp_batch: int = 128
    mp_train_batch: int = 64  # training at 128 doubles the longest stages of a full run; --mp-train-batch 128
    sweep: bool = True
    sweep_presets: list[str] = field(default_factory=lambda: ["crystalformer", "crystalframer"])
    sweep_atoms: list[int] = field(default_factory=lambda: list(SWEEP_ATOMS))
    warmup: int = 1
    repeats: int = 3
    budget: float = 60.0  # wall seconds of timed calls per stage before stopping early (at least one call)
    batch1_repeats: int = 10
    timeout: float = 1800.0  # per subprocess
    rounds: int = 1  # ref cases (and --against's) measured this many times round-robin; the median round is kept
    against: str | None = None
    against_presets: list[str] = field(default_factory=lambda: ["crystalformer", "crystalframer"])
    paired: bool = True  # training steps of paired_presets interleaved in one process (ratios robust to drift)
    paired_presets: list[str] = field(default_factory=lambda: list(PAIRED_PRESETS))
    paired_rounds: int = 9
    compile: bool = False
    compile_presets: list[str] = field(default_factory=lambda: ["crystalformer", "crystalframer"])
    threads: int | None = None
    device: str = "cpu"
    dtype: str = "float32"
    seed: int = 0
    overrides: dict[str, Any] = field(default_factory=dict)
    in_process: bool = False  # tests only: no subprocess, so peak memory is not isolated
    quick: bool = False

    @classmethod
    def quick_plan(cls, **changes: Any) -> Plan:
        base = {
            "mp_batch": 16,
            "mp_train_batch": 16,
            "sweep_atoms": list(QUICK_SWEEP_ATOMS),
            "repeats": 3,
            "budget": 2.0,
            "batch1_repeats": 5,
            "paired_rounds": 3,
            "timeout": 600.0,
            "quick": True,
        }
        return cls(**{**base, **changes})


# --- cases ---------------------------------------------------------------------------------------------------------
def case_stages(plan: Plan, case: str) -> tuple[list, list[dict]]:
    """Structures and stages of a ``ref`` or ``mp`` case."""
    timed = {"warmup": plan.warmup, "repeats": plan.repeats, "budget": plan.budget}
    if case == "ref":
        stages = [
            {"name": "infer_b1", "kind": "infer", "crystals": 1, "warmup": plan.warmup,
             "repeats": plan.batch1_repeats, "budget": max(plan.budget / 4, 1.0)},
            {"name": "infer", "kind": "infer", "outputs": True, **timed},
            {"name": "train", "kind": "train", **timed},
        ]  # fmt: skip
        return batches.reference_structures(plan.ref_crystals), stages
    if case == "mp":
        count = max(plan.mp_batch, plan.mp_train_batch)
        stages = [
            {"name": "infer", "kind": "infer", "crystals": plan.mp_batch, **timed},
            {"name": "train", "kind": "train", "crystals": plan.mp_train_batch, **timed},
        ]
        return batches.mp_like_structures(count, plan.seed), stages
    raise ValueError(f"unknown case {case!r}")


def sweep_stages(plan: Plan) -> list[dict]:
    timed = {"warmup": plan.warmup, "repeats": plan.repeats, "budget": plan.budget}
    return [{"name": "infer", "kind": "infer", **timed}, {"name": "train", "kind": "train", **timed}]


def box_images(structures) -> int:
    """Sum over crystals of N² x the number of images in the crystal's image box (atoms² x images)."""
    total = 0
    for s in structures:
        box = image_box(s.lattice.matrix)
        total += len(s) ** 2 * int((2 * box + 1).prod())
    return total


# --- subprocesses --------------------------------------------------------------------------------------------------
class Measurer:
    """Runs worker specs one at a time (never in parallel: they would disturb each other's timings)."""

    def __init__(self, plan: Plan, workdir: Path, log: Callable[[str], None] = print):
        self.plan = plan
        self.workdir = workdir
        self.log = log
        self.count = 0

    def run(self, spec: dict[str, Any], structures, root: Path = CURRENT_ROOT) -> dict[str, Any]:
        self.count += 1
        tag = f"{self.count:03d}"
        structures_path = batches.dump_structures(structures, self.workdir / f"{tag}.structures.json")
        spec = {
            "structures": str(structures_path),
            "output": str(self.workdir / f"{tag}.result.json"),
            "expect_root": str(root),
            "device": self.plan.device,
            "dtype": self.plan.dtype,
            "threads": self.plan.threads,
            "seed": self.plan.seed,
            "overrides": self.plan.overrides,
            **spec,
        }
        start = time.perf_counter()
        if self.plan.in_process:
            if root != CURRENT_ROOT:
                raise ValueError("--in-process cannot measure another revision")
            result = {"ok": True, **worker.measure(spec)}
            result["memory_method"] = "in-process (not isolated; approximate)"
        else:
            result = self._subprocess(spec, root, tag)
        result["elapsed_s"] = time.perf_counter() - start
        return result

    def _subprocess(self, spec: dict[str, Any], root: Path, tag: str) -> dict[str, Any]:
        spec_path = self.workdir / f"{tag}.spec.json"
        spec_path.write_text(json.dumps(spec))
        env = dict(os.environ)
        # The measured checkout first, for its framer. This checkout's harness needs no path entry: the worker runs
        # by path and loads timing.py by path (``import bench`` would find the measured checkout's bench package).
        env["PYTHONPATH"] = os.pathsep.join([str(root), *filter(None, [env.get("PYTHONPATH")])])
        env.setdefault("PYTHONHASHSEED", "0")
        with open(self.workdir / f"{tag}.log", "w+") as log:
            process = subprocess.Popen(
                [sys.executable, str(WORKER), str(spec_path)],
                cwd=root,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, so a timeout also ends compile workers it started
            )
            try:
                process.wait(timeout=self.plan.timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                return {"ok": False, "error": f"timeout after {self.plan.timeout:.0f} s", "timeout": True}
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)  # leftovers of the group, if any
            log.seek(0)
            output = log.read()
        path = Path(spec["output"])
        if path.exists():
            return json.loads(path.read_text())
        return {"ok": False, "error": f"worker exited with code {process.returncode}", "log_tail": output[-3000:]}


# --- the run -------------------------------------------------------------------------------------------------------
def run(plan: Plan, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure everything in ``plan``; returns the results dict (see :mod:`bench.speed.report`).

    Order: the ``ref`` cases of every preset and, right after them, of ``against`` (``rounds`` times round-robin, so
    the figures that the targets compare are measured close together in time), then the ``mp`` cases, the sweep and
    the compiled models.
    """
    started = time.perf_counter()
    results: dict[str, Any] = {
        "schema": 1,
        "system": system_info(),
        "plan": asdict(plan),
        "batches": {},
        "presets": {preset: {} for preset in plan.presets},
        "sweep": {},
    }
    with tempfile.TemporaryDirectory(prefix="framer-bench-") as tmp, contextlib.ExitStack() as stack:
        measurer = Measurer(plan, Path(tmp), log)
        for case in plan.cases:
            structures, _ = case_stages(plan, case)
            results["batches"][case] = {**batches.describe(structures), "atoms2_box_images": box_images(structures)}
        old_root = None
        if plan.against:
            results["against"] = {"rev": plan.against, "presets": {}}
            try:
                commit, old_root = stack.enter_context(git_worktree(plan.against))
                results["against"]["commit"] = commit
            except (subprocess.CalledProcessError, OSError) as error:
                detail = getattr(error, "stderr", "") or ""
                results["against"]["error"] = f"{type(error).__name__}: {error} {detail}".strip()
                log(f"--against {plan.against}: {results['against']['error']}")
        if "ref" in plan.cases or old_root:
            structures, stages = case_stages(plan, "ref")
            ours = {preset: [] for preset in plan.presets if "ref" in plan.cases}
            theirs = {preset: [] for preset in plan.against_presets if old_root}
            for index in range(max(1, plan.rounds)):
                label = f" (round {index + 1}/{plan.rounds})" if plan.rounds > 1 else ""
                for preset, found in ours.items():
                    found.append(measurer.run({"preset": preset, "stages": stages}, structures))
                    log(summary_line(f"{preset} ref{label}", found[-1]))
                for preset, found in theirs.items():
                    found.append(measurer.run({"preset": preset, "stages": stages}, structures, root=old_root))
                    log(summary_line(f"{preset} ref @ {plan.against}{label}", found[-1]))
            for preset, found in ours.items():
                results["presets"][preset]["ref"] = median_round(found)
            for preset, found in theirs.items():
                results["against"]["presets"][preset] = {"ref": median_round(found)}
        if plan.paired:
            structures, _ = case_stages(plan, "ref")
            spec = {"paired": plan.paired_presets, "paired_rounds": plan.paired_rounds}
            results["paired"] = summarize_paired(measurer.run(spec, structures), plan.paired_presets)
            log(paired_line(results["paired"]))
        stack.close()  # remove the worktree now
        for preset in plan.presets:
            for case in plan.cases:
                if case == "ref":
                    continue
                structures, stages = case_stages(plan, case)
                result = measurer.run({"preset": preset, "stages": stages}, structures)
                results["presets"][preset][case] = result
                log(summary_line(f"{preset} {case}", result))
        if plan.sweep:
            for preset in plan.sweep_presets:
                results["sweep"][preset] = sweep(plan, measurer, preset, log)
        if plan.compile:
            results["compile"] = compiled(plan, measurer, log)
    results["presets"] = {preset: cases for preset, cases in results["presets"].items() if cases}
    results["system"]["load_average_end"] = _load_average()
    results["duration_s"] = time.perf_counter() - started
    return results


def summarize_paired(result: dict[str, Any], presets: list[str]) -> dict[str, Any]:
    """Adds to a paired worker result each preset's median step and its per-round and median ratios to the first
    preset's step of the same round (``ratio_wall``/``ratio_cpu``; ``median_*`` of those)."""
    if not result.get("ok") or not presets:
        return result
    base = presets[0]
    summary: dict[str, Any] = {}
    for preset in presets:
        entry: dict[str, Any] = {}
        for key in ("wall", "cpu"):
            times, base_times = result[f"train_{key}_s"][preset], result[f"train_{key}_s"][base]
            ratios = [t / b for t, b in zip(times, base_times)]
            entry[f"median_{key}_s"] = statistics.median(times)
            entry[f"ratio_{key}"] = ratios
            entry[f"median_ratio_{key}"] = statistics.median(ratios)
        summary[preset] = entry
    return {**result, "base": base, "presets": presets, "summary": summary}


def paired_line(paired: dict[str, Any]) -> str:
    """One log line: each preset's median interleaved step and its median ratio to the first preset."""
    if not paired.get("ok"):
        return f"paired: failed: {paired.get('error', '?')}"
    parts = [
        f"{preset} {entry['median_wall_s']:.3g} s ({entry['median_ratio_wall']:.2f}x)"
        for preset, entry in paired["summary"].items()
    ]
    return f"paired ref, {len(next(iter(paired['train_wall_s'].values())))} interleaved rounds: " + ", ".join(parts)


def median_round(found: list[dict[str, Any]], stage: str = "train") -> dict[str, Any]:
    """The round whose ``stage`` wall time is the median (the lower one of an even count), whole, so its figures
    (times, outputs, memory) belong together; every round's times and load are kept under ``"rounds"``."""
    if len(found) == 1:
        return found[0]

    def wall(result: dict[str, Any]) -> float:
        record = (result.get("stages") or {}).get(stage) or {}
        return record.get("wall_s", float("inf")) if result.get("ok") else float("inf")

    order = sorted(range(len(found)), key=lambda i: wall(found[i]))
    chosen = dict(found[order[(len(found) - 1) // 2]])
    chosen["rounds"] = [
        {
            "ok": bool(result.get("ok")),
            "load_average_end": result.get("load_average_end"),
            **{
                f"{name}_{key}": record[key]
                for name, record in (result.get("stages") or {}).items()
                for key in ("wall_s", "cpu_s")
                if key in record
            },
        }
        for result in found
    ]
    chosen["round_chosen"] = order[(len(found) - 1) // 2]
    return chosen


def sweep(plan: Plan, measurer: Measurer, preset: str, log: Callable[[str], None]) -> list[dict[str, Any]]:
    points, failed = [], None
    for atoms in plan.sweep_atoms:
        structures = [batches.sweep_structure(atoms, plan.seed)]
        point = {"atoms": atoms, "atom_pairs": atoms * atoms, "atoms2_box_images": box_images(structures)}
        if failed:
            point.update(ok=False, error=f"skipped: {failed}")
        else:
            result = measurer.run({"preset": preset, "stages": sweep_stages(plan)}, structures)
            point.update(result)
            point["images"] = (result.get("graph") or {}).get("images")
            log(summary_line(f"{preset} sweep {atoms} atoms", result))
            if not result.get("ok") or any("error" in s for s in result.get("stages", {}).values()):
                failed = f"{atoms} atoms failed"
        points.append(point)
    return points


def compiled(plan: Plan, measurer: Measurer, log: Callable[[str], None]) -> dict[str, Any]:
    """The ``ref`` case (16 crystals) of ``compile_presets`` with ``torch.compile``."""
    section: dict[str, Any] = {"presets": {}}
    structures, stages = case_stages(plan, "ref")
    stages = [s for s in stages if s["name"] != "infer_b1"]  # batch 1 would recompile for new shapes
    for preset in plan.compile_presets:
        result = measurer.run({"preset": preset, "stages": stages, "compile": True}, structures)
        status = "timeout" if result.get("timeout") else "failed"
        result.setdefault("compile", {"status": status, "error": result.get("error")})
        section["presets"][preset] = {"ref": result}
        log(summary_line(f"{preset} ref compiled", result) + f" [compile: {result['compile'].get('status')}]")
    return section


@contextlib.contextmanager
def git_worktree(rev: str, repo: Path = CURRENT_ROOT) -> Iterator[tuple[str, Path]]:
    """A detached ``git worktree`` of ``rev`` in a temporary directory, removed afterwards."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
        ).stdout.strip()

    commit = git("rev-parse", "--verify", f"{rev}^{{commit}}")
    tmp = Path(tempfile.mkdtemp(prefix="framer-bench-worktree-"))
    path = tmp / f"framer-{commit[:10]}"
    git("worktree", "add", "--detach", str(path), commit)
    try:
        yield commit, path.resolve()
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            git("worktree", "remove", "--force", str(path))
        shutil.rmtree(tmp, ignore_errors=True)
        with contextlib.suppress(subprocess.CalledProcessError):
            git("worktree", "prune")


# --- bookkeeping ---------------------------------------------------------------------------------------------------
def summary_line(label: str, result: dict[str, Any]) -> str:
    if not result.get("ok"):
        return f"{label}: FAILED {result.get('error', '')} ({result.get('elapsed_s', 0):.0f} s)"
    parts = []
    for name, record in result.get("stages", {}).items():
        if "error" in record:
            parts.append(f"{name} error")
        elif record["kind"] == "train":
            parts.append(f"{name} {record['wall_s']:.3g} s/step (cpu {record['cpu_s']:.3g} s)")
        else:
            parts.append(f"{name} {record['ms_per_crystal']:.3g} ms/crystal")
    peak = max((r.get("peak_mib", 0) for r in result.get("stages", {}).values()), default=0)
    load = (result.get("load_average_end") or [None])[0]
    load_text = f", load {load:.1f}" if load is not None else ""
    return f"{label}: {', '.join(parts)}, peak {peak:.0f} MiB ({result.get('elapsed_s', 0):.0f} s{load_text})"


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def system_info() -> dict[str, Any]:
    """Host, hardware, software and git state of the measured checkout."""
    provenance = git_commit()
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    return {
        "host": socket.gethostname(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_available": affinity,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": provenance.get("commit"),
        "git_dirty": provenance.get("dirty"),  # uncommitted changes to tracked files
        "load_average_start": _load_average(),
    }
