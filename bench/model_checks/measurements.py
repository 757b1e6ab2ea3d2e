"""Measurements quoted in docs/model.md ("Invariance", "Cell-choice invariance"): run
``python -m bench.model_checks.measurements [invariance|cost]`` from the repository root (one torch thread).

- ``invariance``: for every preset at full size (float64, sigma statistics frozen on two random crystals), the
  largest relative change of the prediction of real crystals (pymatgen's and ase's test structures, as stored and
  strained or perturbed) under rotation, permutation, wrapped translation and changes of cell, with the paper's
  image box and with ``image_box="exact"``.
- ``cost``: a crystalframer training step (forward, L1 loss, backward, AdamW) and a forward without gradients on
  the reference batch, paper box vs exact box, interleaved in one process (medians).
"""

from __future__ import annotations

import statistics
import sys
import time

import numpy as np
import torch

from bench.model_checks.reference_formulation import _reference_records
from framer.models import CrystalFramer
from framer.testing import (
    change_basis,
    make_batch,
    permute,
    predict,
    random_crystal,
    random_rotation,
    rotate,
    supercell,
    translate,
)
from tests.models.structures import (
    dcdft_crystals,
    niggli,
    perturbed,
    pymatgen_crystals,
    rock_salt,
    standard_cells,
    strained,
)

UNIMODULAR = np.array([[1, 1, 0], [0, 1, 0], [1, 0, 1]])
CELL_INDEPENDENT = {"crystalformer", "crystalframer", "crystalframer-lightweight", "crystalframer-static"}
CELL_INDEPENDENT |= {"crystalframer-weighted_pca"}


def _frozen(preset: str, **overrides) -> CrystalFramer:
    torch.manual_seed(0)
    model = CrystalFramer.preset(preset, **overrides).double().train()
    with torch.no_grad():
        model(make_batch([random_crystal(4, seed=100 + i) for i in range(2)]))
    return model.eval()


def real_crystals():
    real = pymatgen_crystals() + dcdft_crystals() + [rock_salt()]
    return real + [strained(real[i]) for i in (1, 4, 5, 8)] + [perturbed(real[i], seed=i) for i in (0, 3, 6)]


def _worst(model, records, transformed) -> float:
    out = predict(model, records)
    other = predict(model, transformed)
    return float(((other - out).abs() / out.abs().clamp_min(1.0)).max())


def invariance_table() -> str:
    crystals = real_crystals()
    small = [c for c in crystals if c.num_atoms <= 10]
    rotation = random_rotation(3)
    transforms = {
        "rotation": (crystals, [rotate(c, rotation) for c in crystals]),
        "permutation": (crystals, [permute(c, np.random.default_rng(1).permutation(c.num_atoms)) for c in crystals]),
        "translation": (crystals, [translate(c, [0.37, -0.81, 0.52]) for c in crystals]),
        "2x1x1 supercell": (small, [supercell(c, (2, 1, 1)) for c in small]),
        "basis change": (small, [change_basis(c, UNIMODULAR) for c in small]),
        "Niggli cell": (small, [niggli(c) for c in small]),
    }
    cells = [standard_cells(name) for name in ("Si", "Li2O", "CsCl", "K2O2", "SrTiO3")]
    transforms["primitive vs conventional"] = ([p for p, _ in cells], [c for _, c in cells])
    rows = ["| preset | box | " + " | ".join(transforms) + " |", "|---|---|" + "---|" * len(transforms)]
    for preset in sorted(CrystalFramer.PRESETS):
        for box in ("paper", "exact"):
            model = _frozen(preset, image_box=box)
            values = [_worst(model, *pair) for pair in transforms.values()]
            rows.append(f"| {preset} | {box} | " + " | ".join(f"{v:.0e}" for v in values) + " |")
            print(rows[-1], flush=True)
    return "\n".join(rows)


def exact_box_cost(rounds: int = 5) -> dict[str, float]:
    from framer.data.batch import collate_records

    records = _reference_records()
    batch = collate_records(records)
    target = torch.randn(len(records))
    models = {}
    for box in ("paper", "exact"):
        torch.manual_seed(0)
        model = CrystalFramer.preset("crystalframer", image_box=box)
        models[box] = (model, torch.optim.AdamW(model.parameters(), lr=1e-4))
    times = {f"{box} {kind}": [] for box in models for kind in ("step", "forward")}
    for round_ in range(rounds + 1):
        for box, (model, optimizer) in models.items() if round_ % 2 else reversed(models.items()):
            start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            torch.nn.functional.l1_loss(model(batch), target).backward()
            optimizer.step()
            middle = time.perf_counter()
            with torch.no_grad():
                model(batch)
            end = time.perf_counter()
            if round_:  # the first round warms up
                times[f"{box} step"].append(middle - start)
                times[f"{box} forward"].append(end - middle)
    return {name: statistics.median(values) for name, values in times.items()}


if __name__ == "__main__":
    torch.set_num_threads(1)
    what = sys.argv[1] if len(sys.argv) > 1 else "invariance"
    if what == "invariance":
        print(invariance_table())
    else:
        for name, value in exact_box_cost().items():
            print(f"{name:16s} {value:.3f} s")
