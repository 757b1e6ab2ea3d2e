"""Measurements of the model quoted in docs/model.md, run from the repository root (they are not tests):

- ``python -m bench.model_checks.reference_formulation``: a brute-force transcription of one attention layer as the
  reference implementation formulates it, and what each of its differences from framer changes ("Deviations").
- ``python -m bench.model_checks.measurements [invariance|cost]``: invariance of every preset on real crystals, and
  the cost of ``image_box="exact"`` ("Invariance").
- ``python -m bench.model_checks.syncs``: host-device synchronisations per layer of a training step, counted on any
  device ("On a GPU"), written to ``bench/results/model-syncs.{json,md}``.
"""
