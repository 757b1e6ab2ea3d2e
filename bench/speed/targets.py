"""The targets of ``targets.yaml`` (and the reference's published CPU figures there), evaluated on a results dict.

Every target row has a measured value, the target, the ratio value / target and whether it is met; a target of the
form "at most" (``<=``) is met when the ratio is <= 1, "at least" (``>=``) when it is >= 1, "completes" when the
measurement ran. Figures are wall-clock medians (``value``), and the same figure from process-CPU-second medians
(``value_cpu``), which a shared, loaded machine disturbs less; with several torch threads CPU seconds add up the
threads, so compare them with the reference's wall seconds only for single-threaded runs (``--threads 1``).

Each row of the file names a ``measure``: the function of :data:`MEASURES` that reads its value from the results.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

TARGETS_FILE = Path(__file__).with_name("targets.yaml")
FORMER = "crystalformer"


@cache
def table() -> dict[str, Any]:
    """The parsed ``targets.yaml``: ``reference`` (figures and their source) and ``targets`` (rows)."""
    return yaml.safe_load(TARGETS_FILE.read_text())


def reference() -> dict[str, Any]:
    """The reference implementation's CPU figures on the reference batch, with ``source``."""
    return dict(table()["reference"])


def stage(results: dict, preset: str, case: str, name: str, section: str | None = None) -> dict | None:
    """The figures of one stage, or None when it was not measured or failed.

    ``section`` None reads the current checkout's presets, "against" or "compile" the older revision's or the
    compiled models'.
    """
    tree = results.get("presets", {}) if section is None else (results.get(section) or {}).get("presets", {})
    node = tree.get(preset, {}).get(case, {})
    record = node.get("stages", {}).get(name) if isinstance(node, dict) else None
    return record if record and "wall_s" in record else None


def memory_exponent(points: list[dict], min_atoms: int) -> float | None:
    """Least-squares slope of log(train peak memory) on log(atoms² x box images) over sweep points >= min_atoms."""
    xs, ys = [], []
    for point in points:
        train = point.get("stages", {}).get("train") or {}
        if point.get("atoms", 0) >= min_atoms and train.get("peak_mib", 0) > 0 and "wall_s" in train:
            xs.append(math.log(point["atoms2_box_images"]))
            ys.append(math.log(train["peak_mib"]))
    if len(xs) < 2 or max(xs) - min(xs) < 1e-9:
        return None
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def max_output_difference(new: dict | None, old: dict | None) -> float | None:
    """max |new - old| / max(1, |old|) over the recorded outputs of two inference stages."""
    if not new or not old or "outputs" not in new or "outputs" not in old or len(new["outputs"]) != len(old["outputs"]):
        return None
    return max(abs(a - b) / max(1.0, abs(b)) for a, b in zip(new["outputs"], old["outputs"]))


# --- measures: (results, row) -> Measured, or None to leave the row out -------------------------------------------
@dataclass
class Measured:
    value: float | None = None
    value_cpu: float | None = None
    note: str = ""
    met: bool | None = None  # only for "completes" rows
    names: dict[str, Any] | None = None  # extra fields for the row's figure ({atoms}, {rev})


def _against_reference(stage_name: str, wall: str, cpu: str, theirs_key: str, unit: str):
    """A row measuring one stage of the reference batch against the reference implementation's figure."""

    def measure(results: dict, row: dict) -> Measured:
        measured = stage(results, row["preset"], "ref", stage_name)
        if not measured:
            return Measured()
        theirs = reference()[theirs_key]
        note = f"{theirs / measured[wall]:.2f}x faster than the reference's {theirs:g} {unit} (wall)"
        return Measured(measured[wall], measured[cpu], note)

    return measure


def _step_ratio(results: dict, row: dict) -> Measured:
    base, other = stage(results, row["base"], "ref", "train"), stage(results, row["preset"], "ref", "train")
    if not base or not other:
        return Measured()
    note = f"{other['wall_s']:.3g} s vs {base['wall_s']:.3g} s wall; {other['cpu_s']:.3g} vs {base['cpu_s']:.3g} CPU s"
    return Measured(other["wall_s"] / base["wall_s"], other["cpu_s"] / base["cpu_s"], note)


def _paired_step_ratio(results: dict, row: dict) -> Measured | None:
    paired = results.get("paired") or {}
    entry = (paired.get("summary") or {}).get(row["preset"]) if paired.get("base") == row["base"] else None
    if entry is None:
        return None  # the interleaved run did not include this preset
    ratios = entry["ratio_wall"]
    note = f"median of {len(ratios)} per-round ratios (wall {min(ratios):.2f}-{max(ratios):.2f})"
    return Measured(entry["median_ratio_wall"], entry["median_ratio_cpu"], note)


def _crystals_per_cpu_s(record: dict) -> float:
    return record["crystals"] / record["cpu_s"] if record.get("cpu_s") else float("nan")


def _throughput_over_against(results: dict, row: dict) -> Measured:
    against = results.get("against") or {}
    new, old = stage(results, row["preset"], "ref", "train"), stage(results, row["preset"], "ref", "train", "against")
    if not new or not old:
        return Measured(note="" if against else "run with --against REV")
    note = f"{new['crystals_per_s']:.3g} vs {old['crystals_per_s']:.3g} crystals/s (wall) at {against.get('rev')}"
    value_cpu = _crystals_per_cpu_s(new) / _crystals_per_cpu_s(old)
    return Measured(new["crystals_per_s"] / old["crystals_per_s"], value_cpu, note)


def _outputs_vs_against(results: dict, row: dict) -> Measured:
    preset = row["preset"]
    diff = max_output_difference(
        stage(results, preset, "ref", "infer"), stage(results, preset, "ref", "infer", "against")
    )
    rev = (results.get("against") or {}).get("rev")
    return Measured(diff, note="same seed, reference batch, eval" if diff is not None else "", names={"rev": rev})


MEASURES: dict[str, Callable[[dict, dict], Measured | None]] = {
    "train_step": _against_reference("train", "wall_s", "cpu_s", "train_step_s", "s"),
    "ms_per_material_b1": _against_reference(
        "infer_b1", "ms_per_crystal", "cpu_ms_per_crystal", "ms_per_material_batch1", "ms"
    ),
    "step_ratio": _step_ratio,
    "paired_step_ratio": _paired_step_ratio,
    "throughput_over_against": _throughput_over_against,
    "outputs_vs_against": _outputs_vs_against,
}


def _memory_exponent(points: list[dict], row: dict) -> Measured:
    note = f"log-log fit over cells >= {row['min_atoms']} atoms"
    return Measured(memory_exponent(points, row["min_atoms"]), note=note)


def _large_cell_trains(points: list[dict], row: dict) -> Measured | None:
    large = [p for p in points if p.get("atoms", 0) >= row["min_atoms"]]
    if not large:
        return None  # the sweep stopped below the size
    point = large[0]
    train = point.get("stages", {}).get("train") or {}
    trained = "wall_s" in train
    note = (
        f"{train['wall_s']:.3g} s/step, {train['cpu_s']:.3g} CPU s, peak {train['peak_mib'] / 1024:.2f} GiB"
        if trained
        else point.get("error") or train.get("error", "not run")
    )
    return Measured(train.get("wall_s"), train.get("cpu_s"), note, met=trained, names={"atoms": point["atoms"]})


SWEEP_MEASURES: dict[str, Callable[[list[dict], dict], Measured | None]] = {
    "memory_exponent": _memory_exponent,
    "large_cell_trains": _large_cell_trains,
}


# --- rows ----------------------------------------------------------------------------------------------------------
def target_value(row: dict) -> float | None:
    """A row's bound: a number, or the reference's figure divided by the speedup."""
    target = row.get("target")
    if isinstance(target, dict):
        return reference()[target["reference"]] / target["speedup"]
    return target


def _judge(value: float | None, target: float | None, comparison: str) -> tuple[float | None, bool | None]:
    """(value / target, met) or (None, None) when either is missing."""
    if value is None or target is None or (isinstance(value, float) and math.isnan(value)):
        return None, None
    ratio = value / target if target else None
    return ratio, bool(value <= target) if comparison == "<=" else bool(value >= target)


def _result_row(row: dict, measured: Measured, names: dict[str, Any]) -> dict[str, Any]:
    target, comparison = target_value(row), row["comparison"]
    ratio, met = _judge(measured.value, target, comparison)
    ratio_cpu, met_cpu = _judge(measured.value_cpu, target, comparison)
    if comparison == "completes":
        met = met_cpu = measured.met
    names = {"rev": "model v1", **names, **{k: v for k, v in (measured.names or {}).items() if v is not None}}
    return {
        "key": row["key"].format(**names),
        "figure": row["figure"].format(**names),
        "value": measured.value,
        "unit": row["unit"],
        "comparison": comparison,
        "target": target,
        "ratio": ratio,
        "met": met,
        "value_cpu": measured.value_cpu,
        "ratio_cpu": ratio_cpu,
        "met_cpu": met_cpu,
        "note": measured.note,
        "target_note": row["note"],
    }


def evaluate(results: dict) -> list[dict[str, Any]]:
    """One result row per target row of ``targets.yaml`` (value None when its inputs were not measured; rows of
    ``per: sweep_preset`` once per preset of the sweep)."""
    rows = []
    for row in table()["targets"]:
        if row.get("per") == "sweep_preset":
            for preset, points in results.get("sweep", {}).items():
                measured = SWEEP_MEASURES[row["measure"]](points, row)
                if measured is not None:
                    rows.append(_result_row(row, measured, {"preset": preset}))
        else:
            measured = MEASURES[row["measure"]](results, row)
            if measured is not None:
                rows.append(_result_row(row, measured, {"preset": row.get("preset")}))
    return rows
