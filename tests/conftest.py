"""Fixtures and hooks for every test: a fixed seed for torch, numpy and ``random``, and skipping GPU tests."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

SEED = 0


@pytest.fixture(autouse=True)
def _seeded() -> None:
    """Every test starts from the same random state, whatever ran before it."""
    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
