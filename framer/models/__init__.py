"""Crystalformer / CrystalFramer models (plain ``nn.Module``s; see docs/model.md)."""

from framer.models.attention import PeriodicAttention
from framer.models.crystalframer import CrystalFramer

__all__ = ["CrystalFramer", "PeriodicAttention"]
