"""E(3)/periodic invariances of every frame type on low-symmetry random crystals (float64).

Tolerances (absolute, relative to max(1, |y|)):

- rotation, translation, permutation: 1e-6. Observed ~1e-11: edge vectors use the minimum-image fractional
  difference, so these transforms give the same image set; the residual comes from images that the 1e-9
  pruning rule keeps or drops depending on rounding.
- change of basis and 2x1x1 supercell: 1e-6 with image boxes covering 16 Å. The image box is per crystal and
  depends on the cell, so a different cell sums over a slightly different set of far images. With the default
  box (3.5 sigma_max ~ 6.9 Å) those far images weigh up to e^-6 of the peak and outputs differ by up to ~1e-3
  (``test_default_box_truncation_is_small`` measures it); with a 16 Å box the difference is negligible.

"pca" and "lattice" frames are only invariant to what they promise: rotation, permutation and Cartesian
translation (pca frames move with wrapped atoms; both change with the choice of cell).

Real and symmetric crystals (pymatgen's and ase's test structures, strained and perturbed copies, random
orthogonal, cubic, one- and two-atom and centrosymmetric cells) make frame choices ties: every preset is checked
for rotation and permutation invariance on them (small models with the preset's frames, 1e-8 relative), and the
cell-independent presets for cell-choice invariance with ``image_box="exact"`` (1e-6 required, ~1e-12 measured).
"""

from __future__ import annotations

import numpy as np
import pytest

from framer.models import CrystalFramer
from framer.testing import (
    assert_invariant,
    change_basis,
    permute,
    predict,
    random_crystal,
    random_rotation,
    rotate,
    supercell,
    translate,
)

from .conftest import frozen_model
from .structures import (
    dcdft_crystals,
    niggli,
    perturbed,
    pymatgen_crystals,
    random_centrosymmetric,
    random_orthogonal,
    rock_salt,
    standard_cells,
    strained,
    symmetric_crystals,
)

ALL_FRAMES = ["crystalformer", "crystalframer", "crystalframer-static", "crystalframer-weighted_pca"]
STATIC_GLOBAL = ["crystalframer-pca", "crystalframer-lattice"]
LARGE_BOX = 16.0  # Å
UNIMODULAR = np.array([[1, 1, 0], [0, 1, 0], [1, 0, 1]])  # det = 1

TRANSFORMS = {
    "rotation": lambda c: rotate(c, random_rotation(11)),
    "translation": lambda c: translate(c, [0.37, -0.81, 0.52]),  # wraps atoms back into the cell
    "cartesian_translation": lambda c: translate(c, [0.37, -0.81, 0.52], wrap=False),
    "permutation": lambda c: permute(c, np.roll(np.arange(c.num_atoms), 2)),
    "basis_change": lambda c: change_basis(c, UNIMODULAR),
    "supercell": lambda c: supercell(c, (2, 1, 1)),
}
CELL_CHANGES = {"basis_change", "supercell"}


@pytest.fixture(scope="module")
def crystal():
    return random_crystal(num_atoms=4, seed=21)


@pytest.fixture(scope="module")
def models():
    return {}


def _model(models: dict, preset: str):
    if preset not in models:
        models[preset] = frozen_model(preset)
    return models[preset]


@pytest.mark.parametrize("transform", sorted(TRANSFORMS))
@pytest.mark.parametrize("preset", ALL_FRAMES)
def test_invariance(models, crystal, preset: str, transform: str) -> None:
    cutoff = LARGE_BOX if transform in CELL_CHANGES else None
    assert_invariant(_model(models, preset), crystal, TRANSFORMS[transform], atol=1e-6, cutoff=cutoff)


@pytest.mark.parametrize("transform", ["rotation", "permutation", "cartesian_translation"])
@pytest.mark.parametrize("preset", STATIC_GLOBAL)
def test_global_frame_invariance(models, crystal, preset: str, transform: str) -> None:
    assert_invariant(_model(models, preset), crystal, TRANSFORMS[transform], atol=1e-6)


def test_lattice_frame_ignores_wrapping(models, crystal) -> None:
    """Lattice frames do not look at positions, so wrapped translations are fine too."""
    assert_invariant(_model(models, "crystalframer-lattice"), crystal, TRANSFORMS["translation"], atol=1e-6)


def test_rotation_in_every_dtype_on_every_device(crystal, dtype, device) -> None:
    model = frozen_model("crystalframer", dtype).to(device)
    assert_invariant(model, crystal, TRANSFORMS["rotation"])  # 1e-6 in float64, 1e-4 in float32


def test_default_box_truncation_is_small(models, crystal) -> None:
    """With the default per-crystal box a supercell differs only by far images (documented in docs/model.md)."""
    model = _model(models, "crystalframer")
    out = predict(model, [crystal, supercell(crystal, (2, 1, 1)), change_basis(crystal, UNIMODULAR)])
    difference = float((out[1:] - out[0]).abs().max())
    assert difference < 1e-2 * max(1.0, float(out[0].abs()))


def test_deterministic(crystal) -> None:
    """Eval-mode outputs are bitwise reproducible (no random tie-breaking)."""
    for preset in ["crystalframer", "crystalframer-weighted_pca", "crystalframer-static"]:
        model = frozen_model(preset)
        records = [crystal, *symmetric_crystals()]
        assert (predict(model, records) == predict(model, records)).all()


# --- real crystals and symmetric random cells (every preset, float64, small models with the preset's frames) -----
SMALL = {"num_layers": 2, "model_dim": 8, "num_heads": 2, "ff_dim": 16, "head_dim": 8}
CELL_INDEPENDENT = ["crystalformer", "crystalframer", "crystalframer-lightweight", "crystalframer-static"]
CELL_INDEPENDENT += ["crystalframer-weighted_pca"]


@pytest.fixture(scope="module")
def real_crystals():
    """Real structures (pymatgen, ase) as given, strained (right angles kept) and perturbed, a hand-made rock salt,
    and random cells whose frame choices are ties: orthogonal, cubic, one- and two-atom, centrosymmetric."""
    real = pymatgen_crystals() + dcdft_crystals(["Po", "Mg"]) + [rock_salt()]
    variants = [strained(real[4]), perturbed(real[3], seed=1)]
    random = [random_orthogonal(1, seed=71), random_orthogonal(2, seed=82, cubic=True), random_centrosymmetric(2, 92)]
    return real + variants + random


@pytest.fixture(scope="module")
def small_models():
    return {}


def _small(small_models: dict, preset: str, image_box: str = "paper"):
    if (preset, image_box) not in small_models:
        box = {} if image_box == "paper" else {"image_box": image_box}  # the default is not passed
        small_models[preset, image_box] = frozen_model(preset, **box, **SMALL)
    return small_models[preset, image_box]


def _assert_same(model, records, transformed, what: str) -> None:
    """Predictions of ``transformed`` (one or more per record, in order) equal those of ``records`` to 1e-8."""
    copies = len(transformed) // len(records)
    out = predict(model, records + transformed)
    base, other = out[: len(records)], out[len(records) :].view(copies, len(records))
    relative = ((other - base).abs() / base.abs().clamp_min(1.0)).amax(dim=0)
    worst = int(relative.argmax())
    assert relative[worst] < 1e-8, f"{what} changes {records[worst].id} by {float(relative[worst]):.2g}"


@pytest.mark.parametrize("preset", sorted(CrystalFramer.PRESETS))
def test_rotation_on_real_and_symmetric_crystals(small_models, real_crystals, preset: str) -> None:
    """Frames on symmetric cells are built from ties (equal lengths, right angles, degenerate spectra): decided
    with a tolerance and orientation-independent rules, a rotated copy gives the same prediction."""
    rotated = [rotate(c, random_rotation(3)) for c in real_crystals]
    _assert_same(_small(small_models, preset), real_crystals, rotated, f"{preset}: a rotation")


@pytest.mark.parametrize("preset", sorted(CrystalFramer.PRESETS))
def test_permutation_on_real_and_symmetric_crystals(small_models, real_crystals, preset: str) -> None:
    """Ties between atoms are decided by keys of the environment, not by atom order."""
    permuted = [permute(c, np.random.default_rng(1).permutation(c.num_atoms)) for c in real_crystals]
    _assert_same(_small(small_models, preset), real_crystals, permuted, f"{preset}: permuting the atoms")


@pytest.mark.parametrize("preset", CELL_INDEPENDENT)
def test_exact_image_box_makes_every_cell_equal(small_models, real_crystals, preset: str) -> None:
    """With image_box="exact", every cell of a crystal (supercells, an unreduced basis, the Niggli cell, the
    standard primitive and conventional cells) gives the same prediction (1e-6 required; ~1e-12 measured)."""
    model = _small(small_models, preset, "exact")
    crystals = [c for c in real_crystals if c.num_atoms <= 8] + [random_crystal(3, seed=5)]
    transforms = [lambda c: supercell(c, (2, 1, 1)), lambda c: supercell(c, (1, 1, 2)), niggli]
    transforms.append(lambda c: change_basis(c, UNIMODULAR))
    _assert_same(model, crystals, [t(c) for t in transforms for c in crystals], f"{preset}: another cell")
    cells = [standard_cells(name) for name in ("Si", "K2O2")]
    _assert_same(model, [p for p, _ in cells], [c for _, c in cells], f"{preset}: the conventional cell")
