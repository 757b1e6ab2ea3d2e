"""framer uses other libraries through their public APIs: no private attribute of a foreign object, no import of a
private name or module of another package.

Read from the source with ``ast``. A private attribute (``x._name``) counts unless it is read on ``self``/``cls`` or
the name is one the same module assigns itself (``self._name = ...``: its own objects). Known uses are listed in
``KNOWN`` with the reason or the step of issue 16 that removes them; a new one fails, and so does an entry that no
longer occurs. Where a library has no public way, the use belongs in one adapter with a test that fails loudly when
the library changes.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "framer"

KNOWN = {
    ("framer/models/attention.py", "super()._load_from_state_dict"): "torch's documented state-dict hook override",
    ("framer/models/attention.py", "weight._version"): "issue 15 branch (models): the tensor's version counter",
    ("framer/matbench/tasks.py", "from matminer.datasets.utils import _get_data_home"): "plan 1.5 #14 (matbench)",
}


def own_private_names(tree: ast.AST) -> set[str]:
    """Private names a module gives its own objects: ``self._x = ...`` and module-level ``_x``."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
            targets = [node.target]
        else:
            continue
        for target in targets:
            if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id == "self":
                names.add(target.attr)
    return names


def private_uses() -> dict[tuple[str, str], int]:
    """(file, expression) -> line of every use of another library's private API in framer/."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        name = str(path.relative_to(REPO))
        own = own_private_names(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                base = node.value
                on_self = isinstance(base, ast.Name) and base.id in ("self", "cls")
                on_super = isinstance(base, ast.Call) and isinstance(base.func, ast.Name) and base.func.id == "super"
                if (on_self or node.attr in own) and not on_super:
                    continue
                found.setdefault((name, ast.unparse(node)), node.lineno)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                if node.module.split(".")[0] in ("framer", "__future__"):
                    continue
                private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                if private or any(part.startswith("_") for part in node.module.split(".")):
                    text = f"from {node.module} import {', '.join(a.name for a in node.names)}"
                    found.setdefault((name, text), node.lineno)
    return found


def test_no_private_api_of_another_library():
    found = private_uses()
    new = {f"{file}:{line}: {expr}" for (file, expr), line in found.items() if (file, expr) not in KNOWN}
    assert not new, f"private APIs of other libraries (use the public way, or one tested adapter): {sorted(new)}"
    stale = sorted(set(KNOWN) - set(found))
    assert not stale, f"uses allowed in KNOWN no longer occur: {stale}; delete them from KNOWN"
