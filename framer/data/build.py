"""Turn raw entries into cache arrays: filter missing targets, apply the split, convert and validate structures.

Order of operations (docs/data.md, "Order of operations in framer"): entries whose target *group* has a missing value
are removed first; the split is computed on positions in that filtered list; then each split entry is converted, and
entries whose structure is malformed (or too large, ``max_atoms``) are skipped and counted in a :class:`SkipReport`,
so the surviving records keep their paper split membership.

The conversion runs in ``workers`` processes (:func:`framer.data.parallel.map_chunks`); results are gathered in split
order, so the arrays, the metadata and the skip report do not depend on the number of processes.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from framer.data.cache import concatenate_columns, records_to_arrays
from framer.data.parallel import map_chunks
from framer.data.sources import (
    JARVIS_SOURCES,
    DataError,
    TargetSpec,
    is_valid_number,
    load_jarvis_dataset,
    load_moduli_pickles,
)
from framer.data.splits import PAPER_SPLITS, SPLIT_NAMES, id_fingerprint, paper_split, split_fingerprint
from framer.data.structures import (
    DEFAULT_MAX_ATOMS,
    CrystalRecord,
    InvalidStructureError,
    labelled,
    record_from_jarvis_atoms,
)

log = logging.getLogger("framer.data")

SPLIT_CODES = {name: code for code, name in enumerate(SPLIT_NAMES)}


@dataclass
class SkipReport:
    """Counts of dropped entries by reason, with the first few ids of each."""

    max_examples: int = 5
    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, id: str, message: str = "") -> None:
        self.counts[reason] += 1
        ids = self.examples.setdefault(reason, [])
        if len(ids) < self.max_examples:
            ids.append(f"{id}: {message}" if message else id)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def to_dict(self) -> dict:
        return {"total": self.total, "counts": dict(self.counts), "examples": self.examples}


class PhaseTimer:
    """Wall and CPU seconds (this process) of a build's named phases, for logs and benchmarks (never in a cache)."""

    def __init__(self) -> None:
        self.phases: dict[str, dict[str, float]] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - wall, time.process_time() - cpu)

    def add(self, name: str, wall_s: float, cpu_s: float) -> None:
        phase = self.phases.setdefault(name, {"wall_s": 0.0, "cpu_s": 0.0})
        phase["wall_s"] = round(phase["wall_s"] + wall_s, 4)
        phase["cpu_s"] = round(phase["cpu_s"] + cpu_s, 4)


@dataclass
class BuildResult:
    """What a builder hands to the cache: arrays, metadata, the skip report and the phases' timings."""

    arrays: dict[str, np.ndarray]
    meta: dict
    report: SkipReport
    timings: dict[str, dict[str, float]] = field(default_factory=dict)


def _convert_positions(
    convert: Callable[[int], CrystalRecord], positions: Sequence[int]
) -> tuple[dict[str, np.ndarray], np.ndarray, list[tuple[str, str, str]]]:
    """Convert ``positions`` (in a worker process, or all of them in this one): the columns of the good records, a
    bool per position (converted or not) and the (reason, id, message) of each record that could not be converted."""
    records, kept, skipped = [], [], []
    for p in positions:
        try:
            records.append(convert(p))
            kept.append(True)
            continue
        except InvalidStructureError as err:
            skipped.append((err.reason, err.record_id or f"#{p}", str(err)))
        except MemoryError:
            skipped.append(("out_of_memory", f"#{p}", "ran out of memory converting this record"))
        kept.append(False)
    return records_to_arrays(records), np.array(kept, dtype=bool), skipped


def assemble(
    split_positions: Mapping[str, np.ndarray],
    convert: Callable[[int], CrystalRecord],
    meta: dict | None = None,
    raw_index: np.ndarray | None = None,
    fingerprint: str = "positions",
    workers: int = 0,
    timer: PhaseTimer | None = None,
) -> BuildResult:
    """Convert every split position with ``convert(position)``; entries it rejects go to the skip report.

    ``workers`` > 1 converts in that many forked processes (``convert`` is inherited, not pickled), each turning its
    share into columns; the columns are concatenated in split order, so the result does not depend on ``workers``.
    The arrays hold the records in split order (train, val, test) with per-record ``position``, ``raw_index``
    (``raw_index[position]``; the position itself without ``raw_index``) and ``split`` columns; the metadata adds
    split sizes and fingerprints of the kept records to ``meta``.
    """
    timer, report = timer or PhaseTimer(), SkipReport()
    positions = np.concatenate([np.asarray(split_positions[name], dtype=np.int64) for name in SPLIT_NAMES])
    codes = np.repeat(
        np.array([SPLIT_CODES[name] for name in SPLIT_NAMES], dtype=np.int8),
        [len(split_positions[name]) for name in SPLIT_NAMES],
    )
    with timer("convert"):
        parts = map_chunks(functools.partial(_convert_positions, convert), positions.tolist(), workers)
    with timer("columns"):
        columns, kept, skipped = zip(*parts)
        for skip in itertools.chain(*skipped):
            report.add(*skip)
        arrays = concatenate_columns(columns)
        kept = np.concatenate(kept)
        del parts, columns
        arrays["position"] = positions[kept]
        arrays["raw_index"] = positions[kept] if raw_index is None else np.asarray(raw_index, np.int64)[positions[kept]]
        arrays["split"] = codes[kept]
        split_meta = _split_meta(arrays, {name: len(split_positions[name]) for name in SPLIT_NAMES}, fingerprint)
    return BuildResult(arrays, {**split_meta, "skipped": report.to_dict(), **(meta or {})}, report, timer.phases)


def _split_meta(arrays: dict[str, np.ndarray], requested: dict[str, int], fingerprint: str) -> dict:
    """Split sizes and fingerprints of the kept records."""
    sizes, fps, raw_fps = {}, {}, {}
    for name, code in SPLIT_CODES.items():
        mask = arrays["split"] == code
        sizes[name] = int(mask.sum())
        if fingerprint == "ids":
            fps[name] = id_fingerprint(arrays["ids"][mask].tolist())
        else:
            fps[name] = split_fingerprint(arrays["position"][mask])
        raw_fps[name] = split_fingerprint(arrays["raw_index"][mask])
    return {
        "sizes": sizes,
        "requested_sizes": requested,
        "split_fingerprints": fps,
        "raw_split_fingerprints": raw_fps,
        "fingerprint_kind": fingerprint,
    }


def _entry_id(entry: object, id_field: str, raw_i: int) -> str:
    if isinstance(entry, dict) and entry.get(id_field) not in (None, ""):
        return str(entry[id_field])
    return f"#{raw_i}"


def _convert_entry(entry: dict, id: str, value: float, max_atoms: int) -> CrystalRecord:
    with labelled(id):
        if entry.get("atoms") is None:
            raise InvalidStructureError("entry has no 'atoms'", reason="missing_atoms")
        return record_from_jarvis_atoms(entry["atoms"], id, value, max_atoms)


def filter_group(entries: Sequence[object], group: Sequence[str], id_field: str, report: SkipReport) -> np.ndarray:
    """Raw indices of the entries whose every group field is a valid number, in file order."""
    kept = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            report.add("malformed_entry", f"#{i}", f"entry is a {type(entry).__name__}, not a dict")
        elif all(is_valid_number(entry.get(f)) for f in group):
            kept.append(i)
        else:
            bad = [f for f in group if not is_valid_number(entry.get(f))]
            report.add("missing_target", _entry_id(entry, id_field, i), f"{', '.join(bad)} missing or not finite")
    return np.asarray(kept, dtype=np.int64)


def build_jarvis_target(
    spec: TargetSpec,
    data_dir: str | os.PathLike | None,
    counts: tuple[int | None, int | None, int | None],
    split_seed: int,
    max_atoms: int = DEFAULT_MAX_ATOMS,
    workers: int = 0,
) -> BuildResult:
    """Records of one megnet/dft_3d_2021 target with the paper's split of ``counts`` = (n_train, n_val, n_test)
    (see the module docstring); ``workers`` > 1 converts the structures in that many processes (same result)."""
    source = JARVIS_SOURCES[spec.dataset]
    timer = PhaseTimer()
    with timer("read"):
        entries = load_jarvis_dataset(spec.dataset, data_dir)
    with timer("filter_split"):
        filtered_report = SkipReport()
        kept = filter_group(entries, spec.group, source.id_field, filtered_report)
        n = len(kept)
        if n == 0:
            raise DataError(f"{source.filename}: no entry has valid values for {', '.join(spec.group)}")
        try:
            splits = paper_split(n, *counts, split_seed=split_seed)
        except ValueError as err:
            hint = "at least 10 are needed for an 80/10/10 split"
            if counts != (None, None, None):
                hint = "for a subset of the published file, set n_train/n_val/n_test to null to use 80/10/10 fractions"
            raise DataError(f"{source.filename} has {n} entries with valid {spec.field!r}: {err}; {hint}") from None
    paper = PAPER_SPLITS[spec.split_key]
    position_fps, raw_fps, matches_paper = paper.compare(splits, kept)
    if not matches_paper:
        sizes = {k: len(v) for k, v in splits.items()}
        same = position_fps == dict(paper.fingerprints)
        note = "; same positions but other entries were filtered out" if same else ""
        log.warning(
            f"{spec.dataset}/{spec.name}: split differs from the paper's (N={n} after filtering, published "
            f"N={paper.total_size}; sizes {sizes}{note})"
        )

    def convert(p: int) -> CrystalRecord:
        raw_i = int(kept[p])
        entry = entries[raw_i]
        return _convert_entry(entry, _entry_id(entry, source.id_field, raw_i), float(entry[spec.field]), max_atoms)

    meta = dict(
        dataset=spec.dataset,
        target=spec.name,
        field=spec.field,
        units=spec.units,
        raw_entries=len(entries),
        filtered_entries=n,
        missing_target=filtered_report.to_dict(),
        unused_positions=int(n - sum(len(v) for v in splits.values())),
        paper_split_fingerprints=position_fps,
        paper_raw_split_fingerprints=raw_fps,
        matches_paper_split=matches_paper,
    )
    return assemble(splits, convert, meta, raw_index=kept, workers=workers, timer=timer)


def build_moduli_target(
    spec: TargetSpec, data_dir: str | os.PathLike | None, max_atoms: int = DEFAULT_MAX_ATOMS, workers: int = 0
) -> BuildResult:
    """Records of bulk/shear modulus from Matformer's pre-split pickles (values already log10 GPa)."""
    timer = PhaseTimer()
    with timer("read"):
        pickles = load_moduli_pickles(spec.moduli_prop, data_dir)
    lists = [pickles[name] for name in SPLIT_NAMES]
    flat = [item for part in lists for item in part]
    starts = np.cumsum([0] + [len(part) for part in lists])
    splits = {name: np.arange(starts[k], starts[k + 1]) for k, name in enumerate(SPLIT_NAMES)}

    def convert(p: int) -> CrystalRecord:
        item = flat[p]
        if not isinstance(item, dict):
            raise InvalidStructureError(f"entry is a {type(item).__name__}, not a dict", reason="malformed_entry")
        id = _entry_id(item, "id", p)
        try:
            value = float(item.get(spec.field))
        except (TypeError, ValueError, OverflowError):
            value = math.nan
        if not math.isfinite(value):
            with labelled(id):
                raise InvalidStructureError(f"{spec.field!r} missing or not finite", reason="missing_target")
        return _convert_entry(item, id, value, max_atoms)

    meta = dict(
        dataset=spec.dataset,
        target=spec.name,
        field=spec.field,
        units=spec.units,
        raw_entries=len(flat),
        filtered_entries=len(flat),
        file_sizes={name: len(part) for name, part in zip(SPLIT_NAMES, lists)},
    )
    in_pickle = np.concatenate([np.arange(len(part)) for part in lists])  # the position in its own pickle
    return assemble(splits, convert, meta, in_pickle, fingerprint="ids", workers=workers, timer=timer)
