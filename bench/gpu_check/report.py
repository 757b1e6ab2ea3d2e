"""The check's results as JSON and markdown: a summary with one row per figure (the paper's beside ours), then
one section per part."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from framer.io import atomic_write_text

PAPER = {  # CrystalFramer poster's efficiency table (JARVIS formation energy); see docs/model.md
    "crystalformer": {"epoch_s": 32.0, "ms_per_material": 6.6},
    "crystalframer": {"epoch_s": 74.0, "ms_per_material": 16.8},
    "crystalframer-lightweight": {"epoch_s": 43.0, "ms_per_material": 15.2},
}
PAPER_HARDWARE = "the Crystalformer paper states one NVIDIA A6000; CrystalFramer's hardware is not stated"
SHORT = {"crystalformer": "Crystalformer", "crystalframer": "CrystalFramer", "crystalframer-lightweight": "lightweight"}


def write(results: dict, directory: Path, name: str) -> tuple[Path, Path]:
    """Write ``<name>.json`` and ``<name>.md`` atomically; returns both paths."""
    directory.mkdir(parents=True, exist_ok=True)
    json_path, md_path = directory / f"{name}.json", directory / f"{name}.md"
    atomic_write_text(json_path, json.dumps(results, indent=1, default=str) + "\n")
    atomic_write_text(md_path, markdown(results))
    return json_path, md_path


def fmt(value: Any, digits: int = 3) -> str:
    """Numbers with ``digits`` significant digits (thousands separated), '–' for missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if math.isinf(value):
            return "inf"
        if abs(value) >= 10 ** (digits + 1) or abs(value) < 1e-3:
            return f"{value:.{digits - 1}e}"
        return f"{value:,.{max(0, digits - 1 - math.floor(math.log10(abs(value))))}f}"
    return str(value)


def _figures(results: dict, part: str) -> dict:
    return results.get("parts", {}).get(part, {}).get("figures", {}) or {}


def _status(results: dict, part: str) -> str:
    record = results.get("parts", {}).get(part)
    if not record:
        return "not run"
    return record["status"] if not record.get("reason") else f"{record['status']}: {record['reason']}"


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [fmt(c) if not isinstance(c, str) else c for c in row]
        lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    return lines


def markdown(results: dict) -> str:
    env = _figures(results, "environment")
    meta = results.get("run", {})
    device = env.get("device_name") or meta.get("device")
    lines = [f"# GPU check: {meta.get('host', '?')} ({meta.get('device')}: {device})", ""]
    commit = (env.get("git_commit") or "?")[:10] + (" (uncommitted changes)" if env.get("git_dirty") else "")
    lines.append(
        f"{env.get('date', '?')} · commit {commit} · torch {env.get('torch', '?')} (CUDA build {env.get('cuda_build')})"
        f" · Python {env.get('python', '?')} · {meta.get('mode')} · took {fmt(meta.get('seconds'))} s ·"
        f" `{meta.get('command', '')}`"
    )
    lines.append("")
    if meta.get("device") != "cuda":
        lines += [
            "**Not GPU figures.** This run used the CPU"
            + (" at tiny sizes (QUICK)" if meta.get("quick") else "")
            + ": it checks that the parts run; its speeds are CPU speeds.",
            "",
        ]
    overrides = results.get("config", {}).get("model_overrides")
    if overrides:
        lines += [f"Every preset ran with a smaller network: {overrides} (frames and angle settings kept).", ""]
    lines += ["## Parts", ""]
    rows = []
    for name, record in results.get("parts", {}).items():
        rows.append(
            [
                name,
                record["status"],
                f"{fmt(record.get('seconds'))} ({fmt(record.get('budget_s'))})",
                record.get("reason", ""),
            ]
        )
    lines += _table(["part", "status", "seconds (budget)", "reason"], rows)
    lines += ["", "## Summary", ""]
    lines += [f"Paper figures: CrystalFramer's efficiency table, JARVIS formation energy ({PAPER_HARDWARE}).", ""]
    lines += _table(["figure", "ours", "paper", "note"], summary_rows(results))
    sections = {"speed": _speed, "correctness": _numerics, "mixed_precision": _numerics, "memory": _memory}
    sections |= {"syncs": _syncs, "loader": _loader, "compile": _compile, "cli_fit": _end_to_end}
    sections |= {"pytest_gpu": _end_to_end, "limit": _limit}
    for section in dict.fromkeys(sections[name] for name in results.get("parts", {}) if name in sections):
        lines += ["", *section(results)]
    return "\n".join(lines).rstrip() + "\n"


def summary_rows(results: dict) -> list[list[Any]]:
    rows: list[list[Any]] = []
    ran = results.get("parts", {})  # rows only for the parts this run selected
    if "speed" in ran:
        speed = _figures(results, "speed")
        jarvis = speed.get("jarvis", {})
        epoch = {p: jarvis.get(p, {}).get("epoch_s") for p in PAPER}
        size = jarvis.get("train_size", 44578)
        batch_size = results.get("config", {}).get("batch_size")
        for preset, paper in PAPER.items():
            rows.append(
                [
                    f"{SHORT[preset]} s/epoch, JARVIS E_form ({size:,} training crystals)",
                    epoch[preset],
                    paper["epoch_s"],
                    f"projected from training crystals/s at batch {batch_size}, JARVIS-like crystals (the paper:"
                    " batch 256)",
                ]
            )
        for preset, paper_ratio in (("crystalframer", 74 / 32), ("crystalframer-lightweight", 43 / 32)):
            ours = epoch[preset] / epoch["crystalformer"] if epoch[preset] and epoch["crystalformer"] else None
            rows.append([f"{SHORT[preset]} / Crystalformer epoch time", ours, round(paper_ratio, 2), ""])
        inference = speed.get("inference_batch1", {})
        for preset, paper in PAPER.items():
            rows.append(
                [
                    f"{SHORT[preset]} inference ms/material (batch 1)",
                    inference.get(preset, {}).get("ms_per_material"),
                    paper["ms_per_material"],
                    "median over single JARVIS-like crystals, eval, no_grad",
                ]
            )
        mp = speed.get("mp", {})
        for preset in PAPER:
            rows.append(
                [
                    f"{SHORT[preset]} training crystals/s, MP-like",
                    mp.get(preset, {}).get("crystals_per_s"),
                    "–",
                    f"s/epoch for MP's {mp.get('train_size', 60000):,}: {fmt(mp.get(preset, {}).get('epoch_s'))}",
                ]
            )
    if "correctness" in ran:
        correctness = _figures(results, "correctness").get("presets", {})
        for dtype, expected in (("float64", "≤ 1e-10 expected"), ("float32", "≤ 1e-4 expected")):
            worst = _worst(correctness, dtype)
            if worst is not None:
                against = next((r[dtype]["against"] for r in correctness.values() if dtype in r), "")
                rows.append(
                    [
                        f"correctness {dtype}: max relative difference, outputs and gradients, all presets",
                        worst,
                        "–",
                        f"{against}; {expected}",
                    ]
                )
    if "mixed_precision" in ran:
        mixed = _figures(results, "mixed_precision").get("presets", {})
        for mode in _figures(results, "mixed_precision").get("modes", []):
            worst = _worst(mixed, mode)
            errors = sum("error" in row.get(mode, {}) for row in mixed.values())
            rows.append(
                [
                    f"{mode} vs float32: max relative difference, all presets",
                    worst if not errors else f"fails on {errors}/{len(mixed)} presets",
                    "–",
                    "reported, not judged",
                ]
            )
    if "memory" in ran:
        memory = _figures(results, "memory")
        peaks = memory.get("peak_mib", {})
        for preset, peak in peaks.items():
            rows.append(
                [
                    f"peak memory (MiB), training step, {preset}, batch {memory.get('batch', {}).get('crystals')}"
                    " MP-like",
                    peak if not isinstance(peak, dict) else peak.get("error"),
                    "–",
                    memory.get("method", ""),
                ]
            )
        largest = memory.get("largest_cell", {})
        if largest:
            rows.append(
                [
                    f"largest cell that trains at batch 1 ({largest.get('preset')}), atoms",
                    largest.get("largest_ok"),
                    "–",
                    f"stopped by {largest.get('stopped_by')}; smallest failing {fmt(largest.get('smallest_failed'))}",
                ]
            )
    if "syncs" in ran:
        syncs = _figures(results, "syncs")
        for preset in PAPER:
            rows.append(
                [
                    f"host-device synchronisations per training step, {SHORT[preset]}",
                    syncs.get(preset, {}).get("per_step", _status(results, "syncs")),
                    "–",
                    "CUDA sync debug mode",
                ]
            )
    if "loader" in ran:
        loader = _figures(results, "loader")
        for name, row in loader.items():
            if isinstance(row, dict) and "crystals_per_s" in row:
                rows.append(
                    [
                        f"DataLoader crystals/s to the device, {name} (workers {row['num_workers']}, pin_memory"
                        f" {row['pin_memory']})",
                        row["crystals_per_s"],
                        "–",
                        f"{fmt(row.get('headroom_over_fastest_model'))}x the fastest model's consumption",
                    ]
                )
    if "compile" in ran:
        compiled = _figures(results, "compile")
        for preset in ("crystalformer", "crystalframer"):
            row = compiled.get(preset, {})
            if row:
                rows.append(
                    [
                        f"torch.compile {SHORT[preset]} ({compiled.get('backend')}): first call / steady step / eager"
                        " step (s)",
                        " / ".join(fmt(row.get(key)) for key in ("first_call_s", "steady_step_s", "eager_step_s")),
                        "–",
                        row.get("status", "") + (f": {row['error']}" if row.get("error") else ""),
                    ]
                )
    if "cli_fit" in ran:
        fit = _figures(results, "cli_fit")
        rows.append(
            [
                "`python -m framer.cli fit`, Ewald data, accelerator auto",
                _status(results, "cli_fit"),
                "–",
                f"test MAE {fmt(fit.get('test_mae'))}, SWA steps {fmt(fit.get('swa_steps'))},"
                f" {fmt(fit.get('seconds'))} s; {fit.get('gpu_available_used') or ''}",
            ]
        )
    if "pytest_gpu" in ran:
        rows.append(
            ["`pytest -m gpu`", _status(results, "pytest_gpu"), "–", _figures(results, "pytest_gpu").get("summary", "")]
        )
    if "limit" in ran:
        limit = _figures(results, "limit").get("presets", {})
        for preset, row in limit.items():
            epoch_row = row.get("epoch", {})
            rows.append(
                [
                    f"{SHORT[preset]} epoch lower bound on an H100 (s)",
                    epoch_row.get("bound_s"),
                    row.get("paper_epoch_s"),
                    f"bound by {epoch_row.get('bound_by')}; paper / bound {fmt(row.get('paper_over_bound'))}x"
                    + (
                        f"; measured / bound {fmt(row['measured_over_bound'])}x" if "measured_over_bound" in row else ""
                    ),
                ]
            )
    return rows


def _worst(rows: dict, key: str) -> float | None:
    values = [max(r[key]["outputs"], r[key]["gradients"]) for r in rows.values() if "outputs" in r.get(key, {})]
    return max(values) if values else None


def _speed(results: dict) -> list[str]:
    speed = _figures(results, "speed")
    lines = ["## Speed", "", f"Status: {_status(results, 'speed')}.", ""]
    rows = []
    for kind in ("jarvis", "mp"):
        table = speed.get(kind, {})
        for preset in PAPER:
            row = table.get(preset, {})
            rows.append(
                [
                    table.get("distribution", kind),
                    preset,
                    row.get("crystals_per_s"),
                    row.get("epoch_s"),
                    ", ".join(fmt(s) for s in row.get("step_s", [])) or row.get("error", ""),
                ]
            )
    lines += _table(["crystals", "preset", "training crystals/s", "projected s/epoch", "timed steps (s)"], rows)
    return lines


def _numerics(results: dict) -> list[str]:
    lines = ["## Correctness and mixed precision (reference batch)", ""]
    correctness = _figures(results, "correctness")
    lines += [f"Correctness: {_status(results, 'correctness')}. Batch: {correctness.get('batch')}.", ""]
    rows = []
    for preset, row in correctness.get("presets", {}).items():
        for dtype in ("float64", "float32"):
            if dtype in row:
                r = row[dtype]
                rows.append(
                    [preset, r["against"], r["outputs"], r["gradients"], r["worst_parameter"] or "", r["within"]]
                )
        if "error" in row:
            rows.append([preset, "error", "–", "–", row["error"], False])
    lines += _table(["preset", "comparison", "outputs", "gradients (worst)", "worst parameter", "within"], rows)
    mixed = _figures(results, "mixed_precision")
    lines += ["", f"Mixed precision: {_status(results, 'mixed_precision')}.", ""]
    modes = mixed.get("modes", [])
    rows = []
    for preset, row in mixed.get("presets", {}).items():
        cells = []
        for mode in modes:
            r = row.get(mode, {})
            if "outputs" in r:
                cells.append(f"{fmt(r['outputs'])} / {fmt(r['gradients'])}")
            else:
                cells.append(r.get("error") or r.get("skipped") or "–")
        rows.append([preset, *cells])
    lines += _table(["preset (outputs / gradients vs float32)", *modes], rows)
    return lines


def _memory(results: dict) -> list[str]:
    memory = _figures(results, "memory")
    largest = memory.get("largest_cell", {})
    tried = ", ".join(f"{atoms}: {fmt(v)}" for atoms, v in largest.get("tried", {}).items())
    return [
        "## Memory",
        "",
        f"Status: {_status(results, 'memory')}. Method: {memory.get('method', '–')}.",
        "",
        f"Largest cell (batch 1, {largest.get('preset')}): {fmt(largest.get('largest_ok'))} atoms trained; "
        f"smallest failure {fmt(largest.get('smallest_failed'))}; stopped by {largest.get('stopped_by')}. "
        f"Tried (atoms: step s): {tried or '–'}.",
    ]


def _syncs(results: dict) -> list[str]:
    syncs = _figures(results, "syncs")
    lines = ["## Host-device synchronisations", "", f"Status: {_status(results, 'syncs')}.", ""]
    rows = []
    for preset, row in syncs.items():
        for where, count in row.get("locations", {}).items():
            rows.append([preset, count / row["steps"], where])
    if rows:
        lines += _table(["preset", "per step", "where"], rows)
    return lines


def _loader(results: dict) -> list[str]:
    loader = _figures(results, "loader")
    cache = loader.get("cache", {})
    lines = [
        "## Data pipeline",
        "",
        f"Status: {_status(results, 'loader')}. Cache: {cache.get('crystals')} crystals,"
        f" built in {fmt(cache.get('build_s'))} s. Model consumption (crystals/s, speed part, JARVIS-like):"
        f" {', '.join(f'{p} {fmt(v)}' for p, v in loader.get('model_crystals_per_s', {}).items()) or '–'}.",
        "",
    ]
    rows = [
        [name, r["num_workers"], r["pin_memory"], r["persistent_workers"], r["first_batch_s"], r["crystals_per_s"]]
        for name, r in loader.items()
        if isinstance(r, dict) and "crystals_per_s" in r
    ]
    lines += _table(["loader", "workers", "pin_memory", "persistent", "first batch s", "crystals/s"], rows)
    return lines


def _compile(results: dict) -> list[str]:
    compiled = _figures(results, "compile")
    lines = ["## torch.compile", "", f"Status: {_status(results, 'compile')}. Backend: {compiled.get('backend')}.", ""]
    rows = []
    for preset in ("crystalformer", "crystalframer"):
        row = compiled.get(preset)
        if row:
            rows.append(
                [
                    preset,
                    row.get("status", ""),
                    row.get("first_call_s"),
                    row.get("steady_step_s"),
                    row.get("eager_step_s"),
                    ", ".join(fmt(s) for s in row.get("calls_s", [])),
                ]
            )
    lines += _table(["preset", "status", "first call s", "steady step s", "eager step s", "all calls s"], rows)
    return lines


def _end_to_end(results: dict) -> list[str]:
    fit = _figures(results, "cli_fit")
    tests = _figures(results, "pytest_gpu")
    return [
        "## End to end",
        "",
        f"`python -m framer.cli fit`: {_status(results, 'cli_fit')}."
        + (f" Command: `{fit['command']}`." if fit.get("command") else ""),
        "",
        f"`pytest -m gpu`: {_status(results, 'pytest_gpu')}."
        + (f" {tests['summary']}." if tests.get("summary") else ""),
    ]


def _limit(results: dict) -> list[str]:
    limit = _figures(results, "limit")
    epoch = limit.get("epoch", {})
    device = limit.get("device", {})
    lines = ["## The physical limit (item 5)", "", f"Status: {_status(results, 'limit')}."]
    if not epoch:
        return lines
    lines += [
        "",
        f"One training epoch of {epoch.get('distribution')} crystals: {fmt(epoch.get('crystals'))} crystals,"
        f" {fmt(epoch.get('atoms'))} atoms, {fmt(epoch.get('edges'))} atom pairs (edges)."
        f" Device model: {device.get('name')},"
        f" {fmt(device.get('bandwidth_bytes_s'))} B/s, {fmt(device.get('fp32_flops_s'))} FLOP/s float32,"
        f" {fmt(device.get('sfu_per_s'))} special functions/s. Cost model: bench/gpu_check/limit.py. The counts"
        " come from the models' own forward passes (untrained, seed 0) and do not depend on the device that ran"
        " them; the bound is for the device model above.",
        "",
    ]
    rows = []
    for preset, row in limit.get("presets", {}).items():
        e = row["epoch"]
        rows.append(
            [
                preset,
                f"{row['counted']['crystals']:,}",
                ", ".join(fmt(p) for p in e["pairs_per_layer"]),
                ", ".join(fmt(t) for t in e["angle_entries_per_layer"]),
                e["flops"],
                e["transcendentals"],
                e["bytes"],
                e["bound_s"],
                e["bound_by"],
                row["paper_epoch_s"],
                row.get("measured_epoch_s"),
            ]
        )
    lines += _table(
        [
            "preset",
            "crystals counted",
            "kept pairs per layer (epoch)",
            "angle entries per layer (epoch)",
            "FLOPs",
            "transcendentals",
            "bytes",
            "bound s",
            "bound by",
            "paper s",
            "measured s",
        ],
        rows,
    )
    return lines
