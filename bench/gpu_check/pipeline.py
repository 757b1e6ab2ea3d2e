"""The environment, the data pipeline and the end-to-end parts (the CLI's ``fit`` and ``pytest -m gpu``).

- environment: interpreter, torch, CUDA and device, which optional packages are importable, framer's commit and
  the directory framer was imported from (it must be this checkout: the check runs with ``PYTHONPATH=.``).
- loader: a cache of synthetic JARVIS-like crystals built through framer's own DataModule machinery (a small
  :class:`~framer.data.datamodules.CrystalDataModule` subclass, no raw files) and its training DataLoader as
  configured (the DataModule's defaults: workers, pinning, persistence), and with more workers (on CUDA also a
  hand-built loader with pinned memory); crystals/s delivered to the device (including the host-to-device copy)
  against the model's consumption from the speed part.
- cli_fit: ``python -m framer.cli fit`` on the embedded Ewald data set with ``trainer.accelerator=auto`` in a
  scratch directory (checkpoint, SWA, test, an MLflow run in a SQLite file); QUICK adds conf/debug/tiny_model.yaml.
- pytest_gpu: ``python -m pytest -m gpu`` on the test files that mark tests ``gpu`` (the same selection as
  ``pytest -m gpu tests`` without importing every other test module and its dependencies).
"""

from __future__ import annotations

import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.gpu_check import crystals
from bench.gpu_check.harness import REPO, PartContext, Skipped, missing_packages, one_line
from bench.gpu_check.steps import synchronize
from framer.provenance import git_commit
from framer.rundir import RunDir

OPTIONAL_PACKAGES = (
    "lightning",
    "scipy",
    "pymatgen",
    "jarvis",
    "mlflow",
    "optuna",
    "jsonargparse",
    "matminer",
    "pytest",
)
FIT_NEEDS = ("jsonargparse", "mlflow", "pymatgen", "scipy", "yaml")
PYTEST_NEEDS = ("pytest",)


def environment(ctx: PartContext) -> None:
    """Versions, device, optional packages, commit and the framer checkout in use."""
    import framer

    figures = ctx.figures
    figures["host"] = socket.gethostname()
    figures["python"] = platform.python_version()
    figures["executable"] = _shown(Path(sys.executable))
    figures["platform"] = platform.platform()
    figures["cpu_count"] = os.cpu_count()
    figures["cpu_model"] = _cpu_model()
    figures["torch"] = torch.__version__
    figures["torch_threads"] = torch.get_num_threads()
    figures["numpy"] = np.__version__
    figures["cuda_build"] = torch.version.cuda
    figures["cuda_available"] = torch.cuda.is_available()
    figures["device"] = ctx.config.device
    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        figures["device_name"] = properties.name
        figures["device_memory_gib"] = round(properties.total_memory / 2**30, 2)
        figures["compute_capability"] = f"{properties.major}.{properties.minor}"
        figures["device_count"] = torch.cuda.device_count()
        figures["cudnn"] = torch.backends.cudnn.version()
    else:
        figures["device_name"] = figures["cpu_model"]
    framer_root = Path(framer.__file__).resolve().parent.parent
    figures["framer_root"] = _shown(framer_root)
    figures["framer_from_checkout"] = framer_root == REPO
    figures["missing_optional"] = missing_packages(OPTIONAL_PACKAGES)
    commit = git_commit()
    figures["git_commit"], figures["git_dirty"] = commit.get("commit"), commit.get("dirty")
    figures["date"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    if not figures["framer_from_checkout"]:
        ctx.fail("framer", f"imported from {figures['framer_root']}, not from this checkout {REPO}")
    if ctx.config.device == "cuda" and not torch.cuda.is_available():
        ctx.fail("device", "DEVICE=cuda but torch.cuda.is_available() is False")


def _shown(path: Path) -> str:
    """A path as the report shows it: relative to this checkout when inside it (no machine paths in results)."""
    return path.relative_to(REPO).as_posix() or "." if path.is_relative_to(REPO) else str(path)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# --- the data pipeline ---------------------------------------------------------------------------------------------
def _synthetic_datamodule_class():
    """A CrystalDataModule over in-memory synthetic records (a lazy import: framer.data.datamodules needs Lightning)."""
    from framer.data.build import assemble
    from framer.data.datamodules import CrystalDataModule

    class SyntheticDataModule(CrystalDataModule):
        """Every record in the training split; the cache lives under ``data_dir``."""

        dataset_name = "gpu-check-synthetic"

        def __init__(self, records, data_dir: str, **loader_settings):
            super().__init__("synthetic", data_dir=data_dir, **loader_settings)
            self.records = records

        def cache_path(self) -> Path:
            return self.data_dir / "processed" / f"synthetic-{len(self.records)}.cache"

        def cache_settings(self) -> dict:
            return {"crystals": len(self.records), "ids": [self.records[0].id, self.records[-1].id]}

        def build(self):
            positions = {"train": np.arange(len(self.records)), "val": np.zeros(0), "test": np.zeros(0)}
            return assemble(positions, lambda p: self.records[p])

    return SyntheticDataModule


def loader(ctx: PartContext) -> None:
    """Crystals/s the training DataLoader delivers to the device, as configured and with more workers."""
    missing = missing_packages(("lightning",))
    if missing:
        raise Skipped(f"needs {', '.join(missing)}")
    from torch.utils.data import DataLoader

    from framer.data.batch import collate_records

    config, device = ctx.config, ctx.device
    data_module_class = _synthetic_datamodule_class()
    records = crystals.like_records("jarvis", config.loader_crystals, seed=0)
    more_workers = 1 if config.quick else min(8, max(1, (os.cpu_count() or 2) - 1))
    with tempfile.TemporaryDirectory(prefix="gpu-check-cache-") as scratch:
        start = time.perf_counter()
        configured = data_module_class(records, scratch, batch_size=config.batch_size)
        configured.setup("fit")
        ctx.figures["cache"] = {
            "crystals": len(records),
            "build_s": time.perf_counter() - start,
            "status": configured.cache_status,
            "bytes": configured.cache_path().stat().st_size,
        }
        more = data_module_class(records, scratch, batch_size=config.batch_size, num_workers=more_workers)
        variants = {"configured": configured.train_dataloader, f"num_workers={more_workers}": more.train_dataloader}
        if device.type == "cuda":  # what pinning would add (the DataModule's loader does not pin today)
            variants[f"num_workers={more_workers}, pin_memory (not the DataModule's loader)"] = lambda: DataLoader(
                more.train_dataset,
                batch_size=config.batch_size,
                shuffle=True,
                drop_last=True,
                collate_fn=collate_records,
                num_workers=more_workers,
                pin_memory=True,
                persistent_workers=True,
            )
        for name, make_loader in variants.items():
            if ctx.left() <= 0:
                ctx.fail(name, "not run: time budget spent")
                continue
            ctx.figures[name] = _delivery(make_loader(), device, config.loader_batches, ctx)
            ctx.save()
    consumption = ctx.previous.get("speed", {}).get("figures", {}).get("jarvis", {})
    model = {
        p: row["crystals_per_s"] for p, row in consumption.items() if isinstance(row, dict) and "crystals_per_s" in row
    }
    ctx.figures["model_crystals_per_s"] = model
    if model:
        fastest = max(model.values())
        for name in variants:
            if "crystals_per_s" in ctx.figures.get(name, {}):
                ctx.figures[name]["headroom_over_fastest_model"] = ctx.figures[name]["crystals_per_s"] / fastest


def _delivery(loader, device: torch.device, batches: int, ctx: PartContext) -> dict:
    """Crystals/s over ``batches`` batches after the first (worker start-up), each copied to the device."""
    settings = {
        "num_workers": loader.num_workers,
        "pin_memory": bool(loader.pin_memory),
        "persistent_workers": bool(getattr(loader, "persistent_workers", False)),
        "batch_size": loader.batch_size,
    }
    start = time.perf_counter()
    iterator = iter(loader)
    next(iterator).to(device=device, non_blocking=True)
    first = time.perf_counter() - start
    crystals_seen, start = 0, time.perf_counter()
    for batch in iterator:
        batch = batch.to(device=device, non_blocking=True)
        crystals_seen += len(batch)
        if crystals_seen >= batches * loader.batch_size or ctx.left() <= 0:
            break
    synchronize(device)
    seconds = time.perf_counter() - start
    del iterator
    return {**settings, "first_batch_s": first, "crystals": crystals_seen, "crystals_per_s": crystals_seen / seconds}


# --- end to end ----------------------------------------------------------------------------------------------------
def _run(ctx: PartContext, command: list[str], cwd: Path, what: str) -> subprocess.CompletedProcess | None:
    """``command`` in the check's environment within the time left; None (and ``what`` failed) on a timeout."""
    try:
        env, timeout = _subprocess_env(ctx.config), max(10, ctx.left())
        return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        ctx.fail(what, f"timed out after {ctx.left():.0f} s")
        return None


def _subprocess_env(config) -> dict[str, str]:
    """The environment of a subprocess: this checkout first on PYTHONPATH, the check's thread count."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}
    if config.threads:
        env["OMP_NUM_THREADS"] = str(config.threads)
    return env


def cli_fit(ctx: PartContext) -> None:
    """``python -m framer.cli fit`` on the embedded data with accelerator auto: checkpoint, SWA, test, MLflow."""
    config = ctx.config
    with tempfile.TemporaryDirectory(prefix="gpu-check-fit-") as scratch:
        scratch = Path(scratch)
        command = [sys.executable, "-m", "framer.cli", "fit"]
        command += [
            "--config",
            str(REPO / "conf" / "default.yaml"),
            "--config",
            str(REPO / "conf" / "data" / "ewald.yaml"),
        ]
        if config.quick:
            command += ["--config", str(REPO / "conf" / "debug" / "tiny_model.yaml")]
        command += [
            "--trainer.accelerator=auto",
            "--trainer.devices=1",
            f"--trainer.max_epochs={1 if config.quick else 3}",
            "--trainer.enable_progress_bar=false",
            "--model.init_args.swa_epochs=1",
            f"--data.init_args.num_crystals={config.fit_crystals}",
            f"--data.init_args.batch_size={4 if config.quick else 32}",
            "--data.init_args.build_workers=0",
            f"--data.init_args.data_dir={scratch / 'data'}",
            f"--tracking.save_dir={scratch / 'runs'}",
            "--tracking.run_name=gpu-check",
            f"--tracking.tracking_uri=sqlite:///{scratch / 'mlflow.db'}",
        ]
        ctx.figures["command"] = " ".join(command[1:]).replace(str(scratch), "<scratch>").replace(str(REPO) + "/", "")
        start = time.perf_counter()
        done = _run(ctx, command, scratch, "fit")
        if done is None:
            return
        ctx.figures["seconds"] = time.perf_counter() - start
        output = done.stdout + done.stderr
        used = re.search(r"GPU available: .*used: (\w+)", output)
        ctx.figures["gpu_available_used"] = used.group(0) if used else None
        if done.returncode != 0:
            lines = [line for line in done.stderr.splitlines() if line.strip()]
            ctx.fail("fit", f"exit code {done.returncode}: {lines[-1] if lines else ''}")
            ctx.figures["stderr_tail"] = done.stderr[-3000:]
            return
        run = RunDir(scratch / "runs" / "gpu-check" / "version_0")
        ctx.figures["checkpoint"] = run.last_checkpoint.is_file()
        metrics, info = run.read_results() or {}, run.read_info()
        ctx.figures["test_mae"] = metrics.get("metrics", {}).get("test/mae")
        ctx.figures["swa_steps"] = metrics.get("swa_steps")
        ctx.figures["global_step"] = metrics.get("global_step")
        ctx.figures["mlflow_run"] = bool(info.get("mlflow_run_id")) and (scratch / "mlflow.db").is_file()
        for what in ("checkpoint", "test_mae", "swa_steps", "mlflow_run"):
            if not ctx.figures[what]:
                ctx.fail("fit", f"no {what.replace('_', ' ')} in the run's files")
        if ctx.config.device == "cuda" and not (used and used.group(1) == "True"):
            ctx.fail("fit", f"accelerator auto did not use the GPU ({ctx.figures['gpu_available_used']})")


def gpu_test_files() -> list[str]:
    """Test files (relative to the checkout) that mark tests ``gpu``."""
    marked = (path for path in sorted((REPO / "tests").rglob("test_*.py")) if "mark.gpu" in path.read_text())
    return [str(path.relative_to(REPO)) for path in marked]


def pytest_gpu(ctx: PartContext) -> None:
    """``python -m pytest -m gpu`` on the files with GPU tests (they skip themselves without CUDA)."""
    files = gpu_test_files()
    if not files:
        raise Skipped("no test is marked gpu")
    command = [sys.executable, "-m", "pytest", "-m", "gpu", *files, "-q", "-p", "no:cacheprovider"]
    ctx.figures["files"] = files
    done = _run(ctx, command, REPO, "pytest -m gpu")
    if done is None:
        return
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    summary = lines[-1].strip("= ") if lines else ""
    counts = {kind: int(n) for n, kind in re.findall(r"(\d+) (passed|failed|skipped|error|errors|deselected)", summary)}
    ctx.figures.update(summary=summary, counts=counts, exit_code=done.returncode)
    if done.returncode != 0:
        ctx.figures["output_tail"] = done.stdout[-3000:]
        ctx.fail("pytest -m gpu", f"exit code {done.returncode}: {one_line(summary)}")
    elif ctx.config.device == "cuda" and not counts.get("passed"):
        ctx.fail("pytest -m gpu", f"no GPU test passed on CUDA ({summary})")
