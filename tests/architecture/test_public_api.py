"""The curated top-level API: ``import framer`` is cheap (no torch) and offers the model, batches, data modules, the
regressor and loading a trained model; everything else is implementation."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

PUBLIC = [
    "__version__",
    "CrystalBatch",
    "CrystalDataModule",
    "CrystalFramer",
    "CrystalRecord",
    "CrystalRegressor",
    "CustomDataModule",
    "EwaldDataModule",
    "JarvisDataModule",
    "MPDataModule",
    "Predictor",
    "collate_records",
    "collate_structures",
    "load",
    "record_from_file",
    "record_from_structure",
]


def test_the_public_names_and_where_they_come_from():
    import framer
    from framer.data import MPDataModule, collate_structures
    from framer.models import CrystalFramer
    from framer.module import CrystalRegressor
    from framer.predictor import load

    assert sorted(framer.__all__) == sorted(PUBLIC)
    assert framer.CrystalFramer is CrystalFramer and framer.CrystalRegressor is CrystalRegressor
    assert framer.MPDataModule is MPDataModule and framer.collate_structures is collate_structures
    assert framer.load is load
    assert framer.__version__ == __import__("importlib.metadata").metadata.version("framer")
    assert set(PUBLIC) <= set(dir(framer))


def test_import_framer_loads_no_torch_and_no_training_framework():
    code = (
        "import sys, framer\n"
        "heavy = sorted(m for m in ('torch', 'lightning', 'mlflow', 'optuna', 'numpy') if m in sys.modules)\n"
        "print(heavy, framer.__version__)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    heavy, version = done.stdout.strip().rsplit(" ", 1)
    assert heavy == "[]" and version


def test_one_owner_answers_framer_version(monkeypatch):
    """cli's config header, export's model.json and ``framer.__version__`` once gave different answers for an
    uninstalled checkout ("(not installed)" vs "0+unknown"): the lookup lives in framer.provenance only."""
    from framer import provenance

    owners = [
        str(path.relative_to(REPO))
        for path in sorted((REPO / "framer").rglob("*.py"))
        if 'metadata.version("framer")' in path.read_text()
    ]
    assert owners == ["framer/provenance.py"]

    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    assert provenance.framer_version() == "0+unknown"
