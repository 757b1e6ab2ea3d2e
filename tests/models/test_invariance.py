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
"""

from __future__ import annotations

import numpy as np
import pytest

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


def test_float32_rotation(crystal) -> None:
    model = frozen_model("crystalframer").float()
    assert_invariant(model, crystal, TRANSFORMS["rotation"])  # 1e-4 in float32


def test_default_box_truncation_is_small(models, crystal) -> None:
    """With the default per-crystal box a supercell differs only by far images (documented in docs/model.md)."""
    model = _model(models, "crystalframer")
    out = predict(model, [crystal, supercell(crystal, (2, 1, 1)), change_basis(crystal, UNIMODULAR)])
    difference = float((out[1:] - out[0]).abs().max())
    assert difference < 1e-2 * max(1.0, float(out[0].abs()))


def test_deterministic(crystal) -> None:
    """Eval-mode outputs are bitwise reproducible (no random tie-breaking)."""
    from .structures import symmetric_crystals

    for preset in ["crystalframer", "crystalframer-weighted_pca", "crystalframer-static"]:
        model = frozen_model(preset)
        records = [crystal, *symmetric_crystals()]
        assert (predict(model, records) == predict(model, records)).all()
