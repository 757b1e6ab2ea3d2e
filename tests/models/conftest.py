"""Shared fixtures for the model tests: small thread count, float64 models with frozen sigma statistics, and the
``dtype`` (float32, float64) and ``device`` (CPU, and CUDA when present) every model test that takes them runs on."""

from __future__ import annotations

import pytest
import torch

from framer.models import CrystalFramer
from framer.testing import make_batch, random_crystal

DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


@pytest.fixture(params=[torch.float32, torch.float64], ids=["float32", "float64"])
def dtype(request) -> torch.dtype:
    return request.param


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    return torch.device(request.param)


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
