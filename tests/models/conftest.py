"""Shared fixtures for the model tests: small thread count, float64 models with frozen sigma statistics."""

from __future__ import annotations

import pytest
import torch

from framer.models import CrystalFramer
from framer.testing import make_batch, random_crystal


@pytest.fixture(autouse=True)
def _one_thread():
    """Keep the model tests light on the shared 2-core machines."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def frozen_model(preset: str, dtype: torch.dtype = torch.float64, seed: int = 0, **overrides) -> CrystalFramer:
    """A preset in eval mode whose sigma statistics were frozen by one training-mode forward."""
    torch.manual_seed(seed)
    model = CrystalFramer.preset(preset, **overrides).to(dtype)
    model.train()
    with torch.no_grad():
        model(make_batch([random_crystal(4, seed=100 + i) for i in range(2)], dtype=dtype))
    return model.eval()


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
