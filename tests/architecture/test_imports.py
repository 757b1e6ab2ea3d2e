"""The import graph of framer/ follows its layers: base -> data -> models -> training core -> command-line faces.

Read from the source with ``ast`` (nothing is imported, so the test takes a fraction of a second). Every import
counts, also those inside functions and under ``TYPE_CHECKING``. Known violations are listed in the ``KNOWN_*``
sets with the issue-16 step that removes them; a new violation fails, and so does an entry that no longer occurs
(delete it: the guard only tightens).
"""

from __future__ import annotations

import ast
import sys
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "framer"

BASE, DATA, DATA_ADDON, MODELS, CORE, FACES = 0, 1, 1.5, 2, 3, 4
LAYER_NAMES = {BASE: "base", DATA: "data", DATA_ADDON: "data add-on", MODELS: "models", CORE: "core", FACES: "faces"}

# The layer of each module, by its longest matching prefix. Planned modules (issue 16 and its neighbours) are
# listed already, so a branch that creates one is checked from its first commit. A module matching no prefix fails.
LAYERS = {
    "framer.errors": BASE,
    "framer.geometry": BASE,
    "framer.io": BASE,
    "framer.provenance": BASE,
    "framer.data": DATA,
    "framer.rundir": DATA,
    "framer.matbench": DATA_ADDON,  # its DataModule; the package's __main__ is a face
    "framer.models": MODELS,
    "framer.testing": MODELS,
    "framer.callbacks": CORE,
    "framer.checkpoints": CORE,
    "framer.evaluate": CORE,
    "framer.instantiate": CORE,
    "framer.module": CORE,
    "framer.plots": CORE,
    "framer.predictor": CORE,
    "framer.tracking": CORE,
    "framer.cli": FACES,
    "framer.data.__main__": FACES,
    "framer.demo": FACES,
    "framer.ensemble": FACES,
    "framer.export": FACES,
    "framer.launch": FACES,
    "framer.matbench.__main__": FACES,
    "framer.predict": FACES,
    "framer.report": FACES,
    "framer.reproduce": FACES,
    "framer.tune": FACES,
}

# Faces are entry points; one may use another only through these (importer prefix, imported prefix) pairs.
# Within one face package (e.g. framer.tune.*) imports are free.
FACE_EDGES = {
    ("framer.launch", "framer.cli"),  # the launcher runs the CLI in-process
    ("framer.tune", "framer.launch"),
    ("framer.reproduce", "framer.launch"),
    ("framer.reproduce", "framer.report"),
    ("framer.matbench.__main__", "framer.launch"),
    ("framer.demo", "framer.launch"),
    ("framer.ensemble", "framer.export"),  # each reproduced cell's seeds exported as one ensemble folder
}

# Packages missing from the lean GPU image (issue 19) or optional: base, data and models never import them.
NOT_ON_GPU_IMAGE = {"mlflow", "optuna", "optuna_integration", "jsonargparse", "matminer", "matbench", "torchdata"}
# Packages the image has, which these layers may import at module level (everything else only inside functions,
# e.g. pymatgen to read a CIF file). filelock and PyYAML come with torch and Lightning.
GPU_IMAGE = {"torch", "numpy", "lightning", "torchmetrics", "pandas", "matplotlib", "safetensors", "filelock", "yaml"}
TRAINING_FRAMEWORKS = {"lightning", "mlflow", "optuna", "optuna_integration", "jsonargparse"}

# Known violations: (importer, imported) -> the step of the plan for issue 16 removing it.
KNOWN_UPWARD: dict = {}
KNOWN_FACE_EDGES: dict = {}
KNOWN_CYCLES: dict = {}
KNOWN_FACADE_IMPORTS: dict = {}  # submodules importing the package facade framer/__init__.py itself


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def sources() -> dict[str, Path]:
    """Every module of framer/, the facade ``framer`` (framer/__init__.py) included."""
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


@cache
def modules() -> frozenset[str]:
    """The modules below the facade: these have layers."""
    return frozenset(sources()) - {"framer"}


@cache
def imports(name: str) -> tuple[tuple[str, bool], ...]:
    """``(imported module, at module level)`` for every import statement of a module. ``from a import b`` gives
    ``a.b`` when that is a framer module, else ``a``; relative imports are resolved."""
    path = sources()[name]
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in top_level) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join([*base, node.module] if node.module else base)
            else:
                source = node.module or ""
            targets = [f"{source}.{a.name}" for a in node.names if f"{source}.{a.name}" in sources()]
            found += [(t, id(node) in top_level) for t in targets or [source]]
    return tuple(found)


def framer_edges() -> set[tuple[str, str]]:
    """Edges between framer modules (the facade ``framer`` itself excluded)."""
    return {(name, target) for name in modules() for target, _ in imports(name) if target in modules()}


def prefix_of(name: str, prefixes) -> str | None:
    matches = [p for p in prefixes if name == p or name.startswith(p + ".")]
    return max(matches, key=len) if matches else None


def layer(name: str) -> float:
    prefix = prefix_of(name, LAYERS)
    if prefix is None:
        pytest.fail(f"{name} has no layer: add it to LAYERS")
    return LAYERS[prefix]


def face_package(name: str) -> str:
    """``framer.tune.objective`` -> ``framer.tune``; ``framer.cli`` -> ``framer.cli``."""
    return ".".join(name.split(".")[:2])


def third_party(name: str) -> str | None:
    top = name.split(".")[0]
    return None if top in sys.stdlib_module_names or top in ("framer", "__future__") else top


def check_known(found: dict, known: dict, what: str) -> None:
    new = {k: v for k, v in found.items() if k not in known}
    assert not new, f"new {what}: {sorted(new)}; keep framer's layers (docs in tests/architecture/test_imports.py)"
    stale = sorted(set(known) - set(found))
    assert not stale, f"{what} allowed in KNOWN no longer occur: {stale}; delete them from the allow-list"


def test_every_module_has_a_layer():
    unplaced = [name for name in modules() if prefix_of(name, LAYERS) is None]
    assert not unplaced, f"add these modules to LAYERS: {unplaced}"


def test_imports_only_go_down_the_layers():
    upward = {
        (a, b): f"{LAYER_NAMES[layer(a)]} imports {LAYER_NAMES[layer(b)]}"
        for a, b in framer_edges()
        if layer(b) > layer(a)
    }
    check_known(upward, KNOWN_UPWARD, "upward imports")


def test_faces_use_each_other_only_through_the_launcher():
    crossing = {
        (a, b): "face imports face"
        for a, b in framer_edges()
        if layer(a) == FACES == layer(b)
        and face_package(a) != face_package(b)
        and not any(a.startswith(src) and b.startswith(dst) for src, dst in FACE_EDGES)
    }
    check_known(crossing, KNOWN_FACE_EDGES, "imports between faces")


def test_no_import_cycle():
    graph: dict[str, set[str]] = {}
    for a, b in framer_edges():
        graph.setdefault(a, set()).add(b)
    cycles = {}
    for a, b in framer_edges():  # an edge a -> b closes a cycle if b reaches a
        seen, todo = set(), [b]
        while todo:
            node = todo.pop()
            if node == a:
                cycles[tuple(sorted((a, b)))] = "cycle"
                break
            if node not in seen:
                seen.add(node)
                todo.extend(graph.get(node, ()))
    check_known(cycles, KNOWN_CYCLES, "import cycles (edges on a cycle)")


def test_no_submodule_imports_the_package_facade():
    found = {name: "imports framer" for name in modules() if "framer" in dict(imports(name))}
    check_known(found, KNOWN_FACADE_IMPORTS, "imports of the framer facade")


def test_models_know_no_training_framework():
    found = {
        (name, pkg): "models import a training framework"
        for name in modules()
        if name.startswith("framer.models")
        for target, _ in imports(name)
        if (pkg := third_party(target)) in TRAINING_FRAMEWORKS
    }
    assert not found, sorted(found)


def test_data_knows_no_models():
    found = [(a, b) for a, b in framer_edges() if a.startswith("framer.data") and b.startswith("framer.models")]
    assert not found


def test_module_knows_no_faces():
    found = [(a, b) for a, b in framer_edges() if a == "framer.module" and layer(b) == FACES]
    assert not found


@pytest.mark.parametrize("lean", ["lazy", "module level"])
def test_base_data_and_models_import_on_the_lean_gpu_image(lean):
    """No import of a package the GPU image lacks, anywhere; at module level only what the image has (and
    Lightning only in the DataModules)."""
    found = {}
    for name in modules():
        if layer(name) > MODELS or name.startswith("framer.matbench"):  # matbench is an optional add-on
            continue
        for target, top_level in imports(name):
            pkg = third_party(target)
            if pkg is None:
                continue
            if lean == "lazy" and pkg in NOT_ON_GPU_IMAGE:
                found[name, pkg] = "not on the GPU image"
            if lean == "module level" and top_level and pkg not in GPU_IMAGE:
                found[name, pkg] = "imported at module level"
            if pkg == "lightning" and name != "framer.data.datamodules":
                found[name, pkg] = "Lightning outside the DataModules"
    assert not found, sorted(found)


def test_the_facade_imports_nothing_heavy():
    """``import framer`` stays cheap: its __init__ imports only the standard library at module level."""
    heavy = [t for t, top_level in imports("framer") if top_level and third_party(t)]
    assert not heavy
