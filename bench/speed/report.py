"""Results -> ``<name>.json``, a markdown report ``<name>.md`` and the scaling-sweep plot ``<name>.png``, atomically."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from bench.speed import targets
from framer.io import atomic_file, atomic_write_text

MIB = 2**20


# --- formatting ----------------------------------------------------------------------------------------------------
def num(value: float | None, digits: int = 3) -> str:
    """``value`` with ``digits`` significant digits (thousands separated), or an en dash when missing."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if value == 0:
        return "0"
    if abs(value) < 1e-3:
        return f"{value:.{digits - 1}e}"
    magnitude = math.floor(math.log10(abs(value)))
    decimals = max(0, digits - 1 - magnitude)
    return f"{value:,.{decimals}f}"


def _stage(result: dict | None, name: str) -> dict | None:
    if not result or not result.get("ok"):
        return None
    record = (result.get("stages") or {}).get(name)
    return record if record and "wall_s" in record else None


def _failure(result: dict | None, name: str | None = None) -> str:
    if result is None:
        return "–"
    if not result.get("ok"):
        return "timeout" if result.get("timeout") else "failed"
    record = (result.get("stages") or {}).get(name or "", {})
    return "failed" if "error" in record else "–"


def _time(result: dict | None, name: str, key: str = "wall_s", cpu_key: str | None = "cpu_s", scale=1.0) -> str:
    record = _stage(result, name)
    if record is None:
        return _failure(result, name)
    text = num(record[key] * scale)
    return f"{text} ({num(record[cpu_key] * scale)})" if cpu_key else text


def _peak(result: dict | None, name: str, previous: str | None = None) -> str:
    record = _stage(result, name)
    if record is None:
        return _failure(result, name)
    text = num(record["peak_mib"])
    earlier = _stage(result, previous) if previous else None
    if earlier and record["peak_mib"] <= earlier["peak_mib"] + 1:
        text = f"≤ {text}"  # the high-water mark did not rise: this stage's own peak is not observable
    return text


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


# --- markdown ------------------------------------------------------------------------------------------------------
def markdown(results: dict[str, Any], plot_name: str | None = None) -> str:
    system, plan = results["system"], results["plan"]
    commit = (system.get("git_commit") or "unknown")[:10]
    if system.get("git_dirty"):
        commit += " (with uncommitted changes)"
    lines = [
        f"# framer benchmark: {system['host']}" + (" (quick)" if plan.get("quick") else ""),
        "",
        f"{system['date']} · commit {commit} · torch {system['torch']} · "
        f"{plan.get('threads') or system['torch_threads']} threads · {system['cpu']} "
        f"({system['cpus_available']} CPUs) · {plan['device']} {plan['dtype']} · "
        f"run took {num(results.get('duration_s', 0) / 60, 2)} min · "
        f"load average {system.get('load_average_start')} → {system.get('load_average_end')}",
        "",
        f"Times are medians of up to {plan['repeats']} timed calls after {plan['warmup']} warm-up call(s), stopping "
        f"early once the timed calls of a stage exceed {num(plan['budget'])} s; wall clock, with process CPU "
        "seconds (all threads) in brackets. Inference is eval mode under no_grad; a training step is forward, L1 "
        "loss, backward and AdamW. Peak memory (MiB) is the resident-set high-water mark of a fresh process per case "
        "minus its size before the first stage (≤ marks a stage whose peak stayed below an earlier stage's). "
        "`python -m bench.speed` measured these; nothing here is asserted by tests."
        + (
            f" The reference-batch cases (and --against's) ran first, {plan['rounds']} times round-robin; each keeps "
            "its round with the median training step (all rounds are in the JSON)."
            if plan.get("rounds", 1) > 1
            else ""
        ),
        "",
    ]
    lines += _targets_section(results)
    lines += _reference_section(results)
    lines += _presets_section(results)
    lines += _paired_section(results)
    if results.get("against"):
        lines += _against_section(results)
    if results.get("compile"):
        lines += _compile_section(results)
    if results.get("sweep"):
        lines += _sweep_section(results, plot_name)
    lines += _errors_section(results)
    return "\n".join(lines).rstrip() + "\n"


def _targets_section(results: dict) -> list[str]:
    rows = []
    for row in targets.evaluate(results):
        if row["target"] is None:
            target = "completes"
        else:
            sign = "≤" if row["comparison"] == "<=" else "≥"
            target = f"{sign} {num(row['target'])} {row['unit']}".strip()
        met = {True: "yes", False: "**no**", None: "–"}
        value = f"{num(row['value'])} {row['unit']}".strip() if row["value"] is not None else "not measured"
        value_cpu = f"{num(row['value_cpu'])} {row['unit']}".strip() if row.get("value_cpu") is not None else "–"
        rows.append(
            [
                row["figure"],
                value,
                value_cpu,
                target,
                num(row["ratio"], 3),
                num(row.get("ratio_cpu"), 3),
                met[row["met"]],
                met[row.get("met_cpu")],
                row["note"],
            ]
        )
    header = ["target", "measured (wall)", "measured (CPU s)", "target", "ratio wall / target",
              "ratio CPU / target", "met (wall)", "met (CPU)", "note"]  # fmt: skip
    threads = results["plan"].get("threads") or results["system"].get("torch_threads")
    intro = (
        "Wall: medians of wall-clock times. CPU: the same figure from medians of the measuring process's CPU seconds "
        + (
            "(one thread: the work done, which load from other processes disturbs far less than the wall clock)."
            if threads == 1
            else f"(summed over its {threads} threads, so not comparable with the reference's wall seconds)."
        )
    )
    return ["## Targets (bench/speed/targets.yaml)", "", intro, "", *_table(header, rows), ""]


def _reference_section(results: dict) -> list[str]:
    ref = (results.get("presets", {}).get(targets.FORMER) or {}).get("ref")
    train, infer, b1 = _stage(ref, "train"), _stage(ref, "infer"), _stage(ref, "infer_b1")
    reference = targets.reference()

    def speedup(ours: float | None, theirs: float) -> str:
        return f"{num(theirs / ours, 3)}x" if ours else "–"

    rows = [
        ["training step, 16 crystals (s)", num(reference["train_step_s"]), num(train and train["wall_s"]),
         speedup(train and train["wall_s"], reference["train_step_s"]), num(train and train["cpu_s"]),
         speedup(train and train["cpu_s"], reference["train_step_s"])],
        ["forward, 16 crystals (s)", num(reference["forward_batch16_s"]), num(infer and infer["wall_s"]),
         speedup(infer and infer["wall_s"], reference["forward_batch16_s"]), num(infer and infer["cpu_s"]),
         speedup(infer and infer["cpu_s"], reference["forward_batch16_s"])],
        ["inference per material, batch 1 (ms)", num(reference["ms_per_material_batch1"]),
         num(b1 and b1["ms_per_crystal"]), speedup(b1 and b1["ms_per_crystal"], reference["ms_per_material_batch1"]),
         num(b1 and b1["cpu_ms_per_crystal"]),
         speedup(b1 and b1["cpu_ms_per_crystal"], reference["ms_per_material_batch1"])],
        ["peak memory, training (MiB; ours: rise over the process's resident set before the case)",
         f"~{num(reference['peak_memory_mib'])}", num(train and train["peak_mib"]),
         speedup(train and train["peak_mib"], reference["peak_memory_mib"]), "–", "–"],
    ]  # fmt: skip
    header = ["reference batch", "reference (wall)", "ours (wall)", "reference / ours (wall)", "ours (CPU s)",
              "reference / ours (CPU)"]  # fmt: skip
    return [
        "## Crystalformer vs the reference implementation's CPU path",
        "",
        f"Reference figures: {reference['source']}.",
        "",
        *_table(header, rows),
        "",
    ]


def _presets_section(results: dict) -> list[str]:
    plan, described = results["plan"], results.get("batches", {})
    notes = []
    if "ref" in described:
        b = described["ref"]
        notes.append(
            f"ref = the reference batch ({b['crystals']} crystals, {b['atoms']} atoms, {b['atom_pairs']:,} pairs)"
        )
    if "mp" in described:
        b = described["mp"]
        notes.append(
            f"MP = MEGNet-MP-like synthetic crystals (inference on {plan['mp_batch']}, training on the first "
            f"{plan['mp_train_batch']}; all {b['crystals']}: {b['atoms']} atoms, {b['atom_pairs']:,} pairs, "
            f"largest {b['max_atoms']})"
        )
    train_mp = f"MP-{plan['mp_train_batch']}"
    infer_mp = f"MP-{plan['mp_batch']}"
    header = [
        "preset", "trainable params", "train step ref (s)", "crystals/s ref", f"train step {train_mp} (s)",
        f"crystals/s {train_mp}", "infer ms/material batch 1", "infer ms/material ref",
        f"infer ms/material {infer_mp}", "peak MiB train ref", f"peak MiB train {train_mp}",
    ]  # fmt: skip
    rows = []
    for preset, cases in results.get("presets", {}).items():
        ref, mp = cases.get("ref"), cases.get("mp")
        params = next((c.get("parameters") for c in (ref, mp) if c and c.get("parameters")), None)
        rows.append(
            [
                preset,
                f"{params:,}" if params else "–",
                _time(ref, "train"),
                _time(ref, "train", "crystals_per_s", None),
                _time(mp, "train"),
                _time(mp, "train", "crystals_per_s", None),
                _time(ref, "infer_b1", "ms_per_crystal", "cpu_ms_per_crystal"),
                _time(ref, "infer", "ms_per_crystal", "cpu_ms_per_crystal"),
                _time(mp, "infer", "ms_per_crystal", "cpu_ms_per_crystal"),
                _peak(ref, "train", "infer"),
                _peak(mp, "train", "infer"),
            ]
        )
    return ["## Presets", "", "; ".join(notes) + ".", "", *_table(header, rows), ""]


def _paired_section(results: dict) -> list[str]:
    paired = results.get("paired")
    heading = "## Interleaved training steps (reference batch, one process)"
    if not paired:
        return []
    if not paired.get("ok"):
        return [heading, "", f"failed: {paired.get('error')}", ""]
    base = paired["base"]
    header = [
        "preset",
        "median step (s)",
        f"median ratio to {base} (wall)",
        "(CPU s)",
        "per-round ratios (wall)",
    ]
    rows = [
        [
            preset,
            f"{num(entry['median_wall_s'])} ({num(entry['median_cpu_s'])})",
            num(entry["median_ratio_wall"]),
            num(entry["median_ratio_cpu"]),
            ", ".join(f"{r:.2f}" for r in entry["ratio_wall"]),
        ]
        for preset, entry in paired["summary"].items()
    ]
    intro = (
        "One training step of each preset in turn, in one process, after one untimed step each; ratios are taken "
        "within each round, so a machine whose speed drifts over minutes disturbs them far less than the per-case "
        "figures above."
    )
    return [heading, "", intro, "", *_table(header, rows), ""]


def _against_section(results: dict) -> list[str]:
    section = results["against"]
    rev = section.get("rev")
    lines = [f"## Against {rev}" + (f" ({section['commit'][:10]})" if section.get("commit") else ""), ""]
    if section.get("error"):
        return [*lines, f"Could not measure {rev}: {section['error']}", ""]
    lines += [
        f"The same harness and batches with the model code of {rev} imported in the measuring process. "
        "Outputs: eval-mode predictions on the reference batch of models built with the same seed.",
        "",
    ]
    rows = []
    for preset, cases in section.get("presets", {}).items():
        old = cases.get("ref")
        new = (results.get("presets", {}).get(preset) or {}).get("ref")
        new_train, old_train = _stage(new, "train"), _stage(old, "train")
        ratio = new_train["crystals_per_s"] / old_train["crystals_per_s"] if new_train and old_train else None
        ratio_cpu = old_train["cpu_s"] / new_train["cpu_s"] if new_train and old_train and new_train["cpu_s"] else None
        diff = targets.max_output_difference(_stage(new, "infer"), _stage(old, "infer"))
        rows.append(
            [
                preset,
                _time(new, "train"),
                _time(old, "train"),
                _time(new, "train", "crystals_per_s", None),
                _time(old, "train", "crystals_per_s", None),
                num(ratio),
                num(ratio_cpu),
                _time(new, "infer_b1", "ms_per_crystal", None),
                _time(old, "infer_b1", "ms_per_crystal", None),
                _peak(new, "train", "infer"),
                _peak(old, "train", "infer"),
                f"{diff:.2g}" if diff is not None else "–",
            ]
        )
    header = [
        "preset", "train step now (s)", f"train step {rev} (s)", "crystals/s now", f"crystals/s {rev}",
        "crystals/s now / then (wall)",
        "crystals/s now / then (CPU s)", "infer ms batch 1 now", f"infer ms batch 1 {rev}", "peak MiB now",
        f"peak MiB {rev}", "outputs max rel. diff",
    ]  # fmt: skip
    return [*lines, *_table(header, rows), ""]


def _compile_section(results: dict) -> list[str]:
    rows = []
    for preset, cases in results["compile"].get("presets", {}).items():
        comp = cases.get("ref") or {}
        eager = (results.get("presets", {}).get(preset) or {}).get("ref")
        info = comp.get("compile") or {}
        first = [
            (_stage(comp, name) or {}).get("warmup_wall_s", [None])[0]
            for name in ("infer", "train")
            if _stage(comp, name) and _stage(comp, name).get("warmup_wall_s")
        ]
        error = info.get("error") or comp.get("error") or ""
        rows.append(
            [
                preset,
                info.get("status", "failed"),
                " / ".join(num(f) for f in first) if first else "–",
                _time(comp, "infer", cpu_key=None),
                _time(eager, "infer", cpu_key=None),
                _time(comp, "train", cpu_key=None),
                _time(eager, "train", cpu_key=None),
                (error[:200] + "…") if len(error) > 200 else error,
            ]
        )
    header = [
        "preset", "status", "first call infer / train (s)", "forward ref compiled (s)", "forward ref eager (s)",
        "train step compiled (s)", "train step eager (s)", "error",
    ]  # fmt: skip
    return ["## torch.compile (reference batch)", "", *_table(header, rows), ""]


def _sweep_section(results: dict, plot_name: str | None) -> list[str]:
    rows = []
    for preset, points in results["sweep"].items():
        for point in points:
            train = _stage(point, "train")
            peak = train["peak_mib"] if train else None
            images = point.get("images")
            rows.append(
                [
                    preset,
                    str(point["atoms"]),
                    f"{point['atom_pairs']:,}",
                    f"{point['atoms2_box_images']:,}",
                    f"{images:,}" if images else "–",
                    _time(point, "infer"),
                    _time(point, "train"),
                    _peak(point, "train", "infer"),
                    num(peak * MIB / point["atoms2_box_images"]) if peak else "–",
                    num(peak * MIB / images) if peak and images else "–",
                ]
            )
    header = [
        "preset", "atoms", "atoms²", "atoms² x box images", "kept (edge, image) pairs", "forward (s)",
        "train step (s)", "peak MiB train", "bytes / (atoms² x box images)", "bytes / kept pair",
    ]  # fmt: skip
    lines = [
        "## Scaling sweep (one synthetic cell per size, batch 1)",
        "",
        "Box images: the crystal's whole image box (2R+1)³; kept pairs: (edge, image) pairs the model's periodic "
        "graph keeps after pruning (`PeriodicGraph.num_images`). Linear memory shows as a flat bytes-per-pair column.",
        "",
        *_table(header, rows),
        "",
    ]
    if plot_name:
        lines += [f"![scaling sweep]({plot_name})", ""]
    return lines


def _errors_section(results: dict) -> list[str]:
    found = []

    def collect(label: str, result: dict | None) -> None:
        if not result:
            return
        if not result.get("ok") and result.get("error"):
            found.append(f"- {label}: {result['error']}")
        for name, record in (result.get("stages") or {}).items():
            if "error" in record:
                found.append(f"- {label} {name}: {record['error'][:300]}")

    for preset, cases in results.get("presets", {}).items():
        for case, result in cases.items():
            collect(f"{preset} {case}", result)
    for preset, cases in (results.get("against") or {}).get("presets", {}).items():
        collect(f"{preset} ref @ {results['against'].get('rev')}", cases.get("ref"))
    for preset, points in results.get("sweep", {}).items():
        for point in points:
            collect(f"{preset} sweep {point['atoms']} atoms", point)
    return ["## Failures", "", *found, ""] if found else []


# --- plot ----------------------------------------------------------------------------------------------------------
def plot(results: dict[str, Any], path: Path) -> Path | None:
    """Three panels over the scaling sweep: time vs atoms, peak memory vs atoms² x images, bytes per kept pair."""
    if not results.get("sweep"):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for index, (preset, points) in enumerate(results["sweep"].items()):
        color = f"C{index}"
        good = [p for p in points if _stage(p, "train")]
        if not good:
            continue
        atoms = [p["atoms"] for p in good]
        axes[0].plot(atoms, [_stage(p, "train")["wall_s"] for p in good], "o-", color=color, label=f"{preset} train")
        infer = [p for p in good if _stage(p, "infer")]
        axes[0].plot(
            [p["atoms"] for p in infer],
            [_stage(p, "infer")["wall_s"] for p in infer],
            "s--",
            color=color,
            label=f"{preset} forward",
        )
        x = [p["atoms2_box_images"] for p in good]
        peak = [max(_stage(p, "train")["peak_mib"], 1e-3) for p in good]
        axes[1].plot(x, peak, "o-", color=color, label=preset)
        axes[1].plot([x[-1] / 100, x[-1]], [peak[-1] / 100, peak[-1]], ":", color=color, lw=1)
        with_images = [p for p in good if p.get("images")]
        axes[2].plot(
            [p["atoms"] for p in with_images],
            [_stage(p, "train")["peak_mib"] * MIB / p["images"] for p in with_images],
            "o-",
            color=color,
            label=preset,
        )
    axes[0].set(xscale="log", yscale="log", xlabel="atoms per cell", ylabel="seconds (median)", title="time")
    axes[1].set(
        xscale="log",
        yscale="log",
        xlabel="atoms² x box images",
        ylabel="peak MiB (training)",
        title="peak memory (dotted: slope 1)",
    )
    axes[2].set(xscale="log", xlabel="atoms per cell", ylabel="bytes", title="peak training memory per kept pair")
    for axis in axes:
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
    system = results["system"]
    commit = (system.get("git_commit") or "")[:10]
    fig.suptitle(f"framer scaling sweep, {system['host']}, {system['date']}, commit {commit}")
    fig.tight_layout()
    try:
        with atomic_file(path, "wb") as handle:
            fig.savefig(handle, dpi=110, format="png")
    finally:
        plt.close(fig)
    return path


# --- files ---------------------------------------------------------------------------------------------------------
def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "host"


def write(results: dict[str, Any], out_dir: str | Path, name: str) -> dict[str, Path]:
    """Write ``name``.json, .md and .png (the plot only when there is a sweep) into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = safe_name(name)
    results["targets"] = targets.evaluate(results)
    results["reference"] = targets.reference()
    paths = {"json": out_dir / f"{name}.json", "md": out_dir / f"{name}.md"}
    png = plot(results, out_dir / f"{name}.png")
    if png:
        paths["png"] = png
    atomic_write_text(paths["md"], markdown(results, png.name if png else None))
    text = json.dumps(results, indent=1, sort_keys=False, default=str)
    root = json.dumps(str(Path(__file__).resolve().parents[2]))[1:-1]  # this checkout: shown as "." (no machine paths)
    atomic_write_text(paths["json"], text.replace(f'"{root}"', '"."').replace(f'"{root}/', '"') + "\n")
    return paths
