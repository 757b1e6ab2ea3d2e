"""No block of six or more lines is written twice in framer/ (one owner per piece of code).

A block is 6 consecutive lines after normalisation (blank lines, comments and import statements dropped, each line
stripped) with at least 60 characters. Known duplicates are allowed per pair of files in ``KNOWN`` with the
issue-16 step that removes them; a new one fails, and so does an entry that no longer occurs.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from itertools import pairwise
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "framer"
WINDOW = 6
MIN_CHARS = 60

KNOWN = {}


def normalised_lines(path: Path) -> list[tuple[int, str]]:
    """``(line number, stripped text)`` of the lines that count: no blanks, comments or imports."""
    text = path.read_text()
    imports = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            imports.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
    lines = []
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped and not stripped.startswith("#") and number not in imports:
            lines.append((number, stripped))
    return lines


def duplicated_blocks() -> dict[tuple[str, str], list[str]]:
    """Pairs of files (a file may pair with itself) -> where their shared blocks start."""
    seen: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for path in sorted(PACKAGE.rglob("*.py")):
        lines = normalised_lines(path)
        name = str(path.relative_to(REPO))
        for i in range(len(lines) - WINDOW + 1):
            block = "\n".join(text for _, text in lines[i : i + WINDOW])
            if len(block) - WINDOW + 1 >= MIN_CHARS:
                seen[block].append((name, lines[i][0]))
    pairs: dict[tuple[str, str], list[str]] = defaultdict(list)
    for places in seen.values():
        for (a, line_a), (b, line_b) in pairwise(places):
            pairs[tuple(sorted((a, b)))].append(f"{a}:{line_a} = {b}:{line_b}")
    return pairs


def test_no_duplicated_blocks():
    found = duplicated_blocks()
    new = {pair: places[:3] for pair, places in found.items() if pair not in KNOWN}
    assert not new, f"blocks of {WINDOW} lines written twice (give them one owner): {new}"
    stale = sorted(set(KNOWN) - set(found))
    assert not stale, f"duplicates allowed in KNOWN no longer occur: {stale}; delete them from KNOWN"
