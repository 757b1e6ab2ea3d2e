"""A small Matbench task in matminer's real file format (``<task>.json.gz``) plus a matching validation file."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from framer.data.ewald import generate_records
from framer.matbench import tasks


def write_fixture(root: Path, task: str = "matbench_log_kvrh", n: int = 40, seed: int = 0) -> tuple[Path, Path]:
    """Write ``root/<task>.json.gz`` with ``n`` crystals (matminer's writer) and ``root/validation.json``.

    The fixture's ids (``mb-log-kvrh-01``...) are not the real task's, so its folds come from
    :func:`framer.matbench.tasks.make_validation` (matbench's protocol applied to ``n`` rows).
    """
    from matminer.utils.io import store_dataframe_as_json
    from pymatgen.core import Lattice, Structure

    meta = tasks.task_metadata(task)
    structures, targets = [], []
    for r in generate_records(n, seed=seed, num_workers=0, max_atoms=6):
        structures.append(Structure(Lattice(r.lattice), [int(z) for z in r.atomic_numbers], r.frac_coords))
        targets.append(r.target)
    df = pd.DataFrame({meta["input_type"]: structures, meta["target"]: targets})
    root.mkdir(parents=True, exist_ok=True)
    store_dataframe_as_json(df, str(root / f"{task}.json.gz"), compression="gz", orient="split", pbar=False)
    validation = tasks.write_validation(root / "validation.json", {task: tasks.make_validation(task, n)})
    return root, validation
