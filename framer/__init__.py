"""framer: CrystalFramer / Crystalformer crystal property prediction in pure PyTorch + Lightning."""

__version__ = "0.1.0"
