"""Speed and memory benchmarks of the models: ``python -m bench.speed`` (from the repository root) or ``make bench``.

For each preset it measures, each case in a fresh subprocess: training-step time and crystals per second on the
reference batch (16 crystals, 268 atoms; docs/model.md "Performance") and on a MEGNet-MP-like batch of synthetic
crystals; inference time per material at batch 1 and at batch 128; peak memory; then a scaling sweep over atoms per
cell (8 ... 512). For the frame-cost ratios it also interleaves the training steps of Crystalformer, CrystalFramer
and lightweight in one process (ratios within each round, robust to a drifting machine speed). ``--against REV``
measures another revision's framer with this harness, ``--compile`` adds ``torch.compile``'d models. Results:
``bench/results/<host>.json``, ``.md`` (each target with its ratio) and ``.png``.

Modules and files, one job each:

- :mod:`~bench.speed.batches`: the crystals as pymatgen Structures (built by :mod:`bench.gpu_check.crystals`).
- :mod:`~bench.speed.timing`: medians of repeated calls, wall and CPU seconds, peak memory.
- :mod:`~bench.speed.worker`: one measured case inside a subprocess.
- :mod:`~bench.speed.runner`: the plan, the subprocesses, ``--against`` worktrees, system information.
- ``targets.yaml``: the reference's published figures and the targets; :mod:`~bench.speed.targets` evaluates them.
- :mod:`~bench.speed.report`: markdown tables, plot and atomic writes.
"""
