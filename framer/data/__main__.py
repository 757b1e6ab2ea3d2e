"""``python -m framer.data info | download``: what data are present, their counts and split fingerprints.

``info`` works offline: for absent data it prints the expected sizes and the fingerprints regenerated from the split
algorithm (and checks them against the published ones). ``download`` is for machines with internet access; it
uses jarvis-tools' loader with ``store_dir=<data root>/raw``. User errors print one line and exit with status 1.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import sys
from pathlib import Path

from framer.data.sources import (
    JARVIS_SOURCES,
    TARGETS,
    DataError,
    data_root,
    download_jarvis,
    download_moduli,
    jarvis_zip_path,
    load_jarvis_dataset,
    load_moduli_pickles,
    moduli_paths,
    raw_dir,
)
from framer.data.splits import MODULI_SPLIT_SIZES, PAPER_SPLITS, SPLIT_NAMES, paper_split, split_fingerprint


def _cache_summary(path: Path) -> dict | None:
    from framer.data.cache import CacheError, read_header

    if not path.exists():
        return None
    try:
        header, _ = read_header(path)
    except (CacheError, OSError) as err:
        return {"path": str(path), "error": str(err)}
    meta = header.get("meta", {})
    return {"path": str(path), "sizes": meta.get("sizes"), "skipped": meta.get("skipped", {}).get("total")}


@functools.cache
def _expected(split_key: str) -> dict:
    paper = PAPER_SPLITS[split_key]
    regenerated = paper.generate()
    fps = {name: split_fingerprint(idx) for name, idx in regenerated.items()}
    out = {
        "expected_filtered_entries": paper.total_size,
        "expected_sizes": dict(zip(SPLIT_NAMES, paper.sizes)),
        "split_fingerprints": fps,
        "algorithm_matches_published": fps == dict(paper.fingerprints),
    }
    if dict(paper.raw_fingerprints) != dict(paper.fingerprints):
        out["published_raw_split_fingerprints"] = dict(paper.raw_fingerprints)
    return out


def _jarvis_info(dataset: str, root: Path, errors: list[str]) -> dict:
    from framer.data.build import SkipReport, filter_group

    source = JARVIS_SOURCES[dataset]
    path = jarvis_zip_path(dataset, root)
    info: dict = {"raw_file": str(path), "present": path.is_file(), "published_entries": source.entries, "targets": {}}
    entries = None
    if info["present"]:
        print(f"reading {path} ...", file=sys.stderr)
        try:
            entries = load_jarvis_dataset(dataset, root)
            info["entries"] = len(entries)
        except DataError as err:
            info["error"] = str(err)
            errors.append(str(err))
    for name, spec in TARGETS[dataset].items():
        if spec.pickled:
            continue
        target: dict = {"field": spec.field, "units": spec.units, "group": list(spec.group)}
        paper = PAPER_SPLITS[spec.split_key]
        if entries is None:
            target.update(copy.deepcopy(_expected(spec.split_key)))
        else:
            kept = filter_group(entries, spec.group, source.id_field, SkipReport())
            target["filtered_entries"] = len(kept)
            try:
                splits = paper_split(len(kept), *paper.counts)
            except ValueError as err:
                target["split_error"] = str(err)
            else:
                fps, raw, matches = paper.compare(splits, kept)
                target.update(
                    sizes={k: len(v) for k, v in splits.items()},
                    split_fingerprints=fps,
                    raw_split_fingerprints=raw,
                    matches_paper_split=matches,
                )
        cache = _cache_summary(root / "processed" / dataset / f"{name}.cache")
        if cache:
            target["cache"] = cache
        info["targets"][name] = target
    return info


def _moduli_info(root: Path, errors: list[str]) -> dict:
    info = {}
    for name, sizes in MODULI_SPLIT_SIZES.items():
        prop = name.split("_")[0]
        paths = moduli_paths(prop, root)
        entry: dict = {
            "raw_files": [str(p) for p in paths.values()],
            "present": all(p.is_file() for p in paths.values()),
            "units": "log10(GPa)",
            "expected_sizes": dict(zip(SPLIT_NAMES, sizes)),
        }
        if entry["present"]:
            try:
                lists = load_moduli_pickles(prop, root)
                entry["sizes"] = {k: len(v) for k, v in lists.items()}
            except DataError as err:
                entry["error"] = str(err)
                errors.append(str(err))
        cache = _cache_summary(root / "processed" / "megnet" / f"{name}.cache")
        if cache:
            entry["cache"] = cache
        info[name] = entry
    return info


def collect_info(data_dir: str | None = None) -> tuple[dict, list[str]]:
    """Everything ``info`` prints, as a dict, plus the errors met (corrupt files)."""
    root, errors = data_root(data_dir), []
    datasets = {dataset: _jarvis_info(dataset, root, errors) for dataset in JARVIS_SOURCES}
    datasets["megnet_moduli"] = _moduli_info(root, errors)
    ewald_caches = sorted((root / "processed" / "ewald").glob("*.cache"))  # none when the folder is absent
    datasets["ewald"] = {"embedded": True, "caches": [_cache_summary(p) for p in ewald_caches]}
    return {"data_root": str(root), "raw_dir": str(raw_dir(root)), "datasets": datasets}, errors


def _print_text(report: dict) -> None:
    out = print
    out(f"data root: {report['data_root']}  (raw files in {report['raw_dir']})")
    for dataset, info in report["datasets"].items():
        if dataset in JARVIS_SOURCES:
            out(f"\n[{dataset}] {info['raw_file']}: {'present' if info['present'] else 'MISSING'}")
            if "error" in info:
                out(f"  ERROR: {info['error']}")
            if "entries" in info:
                out(f"  entries: {info['entries']} (published: {info['published_entries']})")
            elif not info["present"]:
                out(f"  jarvis-tools key {JARVIS_SOURCES[dataset].key!r}; get it with "
                    f"`python -m framer.data download --dataset {dataset}` on a machine with internet")  # fmt: skip
            for name, target in info["targets"].items():
                _print_target(name, target)
        elif dataset == "megnet_moduli":
            for name, entry in info.items():
                state = "present" if entry["present"] else "MISSING"
                out(f"\n[megnet {name}] {Path(entry['raw_files'][0]).parent}/*_megnet_*.pkl: {state}")
                if "error" in entry:
                    out(f"  ERROR: {entry['error']}")
                if "sizes" in entry:
                    out(f"  split sizes (pre-split pickles): {_fmt_sizes(entry['sizes'])}")
                out(f"  expected: {_fmt_sizes(entry['expected_sizes'])} ({entry['units']})")
                if not entry["present"]:
                    out("  get them with `python -m framer.data download --dataset moduli` on a machine with internet")
        else:
            out(f"\n[ewald] embedded (generated on first use); {len(info['caches'])} cache(s)")
            for cache in info["caches"]:
                out(f"  {cache['path']}: {_fmt_sizes(cache.get('sizes') or {})}")


def _print_target(name: str, target: dict) -> None:
    lines = [f"  {name} ({target['field']}, {target['units']}):"]
    if "filtered_entries" in target:
        lines.append(f"    filtered entries: {target['filtered_entries']}")
    if "split_error" in target:
        lines.append(f"    paper split not applicable: {target['split_error']}")
    if "sizes" in target:
        verdict = "matches the paper" if target["matches_paper_split"] else "DIFFERS from the paper"
        lines.append(f"    split sizes: {_fmt_sizes(target['sizes'])} ({verdict})")
    if "expected_sizes" in target:
        ok = "regenerated = published" if target["algorithm_matches_published"] else "MISMATCH"
        expected = f"{target['expected_filtered_entries']} entries, split {_fmt_sizes(target['expected_sizes'])}"
        lines.append(f"    expected: {expected} ({ok})")
    fingerprints = target.get("split_fingerprints", {})
    lines += [f"    {split:5s} {fp}" for split, fp in fingerprints.items()]
    raw = target.get("raw_split_fingerprints") or target.get("published_raw_split_fingerprints") or {}
    if raw and raw != fingerprints:
        lines.append("    raw-index fingerprints (indices into the unfiltered file):")
        lines += [f"    {split:5s} {fp}" for split, fp in raw.items()]
    if "cache" in target:
        lines.append(f"    cache: {target['cache']['path']}")
    print("\n".join(lines))


def _fmt_sizes(sizes: dict) -> str:
    return "/".join(str(sizes.get(k, "?")) for k in SPLIT_NAMES) + " (train/val/test)"


def _cmd_info(args: argparse.Namespace) -> int:
    report, errors = collect_info(args.data_dir)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_text(report)
    if errors:
        print(f"error: {errors[0]}", file=sys.stderr)
        return 1
    return 0


def _cmd_download(args: argparse.Namespace) -> int:
    wanted = ["megnet", "dft_3d_2021", "moduli"] if args.dataset == "all" else [args.dataset]
    for name in wanted:
        if name == "moduli":
            for path in download_moduli(args.data_dir, args.timeout):
                print(f"ok: {path}")
        else:
            print(f"ok: {download_jarvis(name, args.data_dir, args.timeout)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m framer.data", description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="data root (default: $FRAMER_DATA_DIR or ./data)")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="presence, counts and split fingerprints of every data set")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(func=_cmd_info)
    download = sub.add_parser("download", help="fetch raw files (needs internet)")
    download.add_argument("--dataset", choices=["megnet", "dft_3d_2021", "moduli", "all"], default="all")
    download.add_argument("--timeout", type=float, default=120.0, help="network timeout in seconds")
    download.set_defaults(func=_cmd_download)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (DataError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
