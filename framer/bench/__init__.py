"""Speed and memory benchmarks of the models (issue 6): ``python -m framer.bench`` or ``make bench``.

For each preset it measures, each case in a fresh subprocess: training-step time and crystals per second on the
reference batch (16 crystals, 268 atoms; model-spec §12) and on a MEGNet-MP-like batch of synthetic crystals;
inference time per material at batch 1 and at batch 128; peak memory; then a scaling sweep over atoms per cell
(8 ... 512). For the frame-cost ratios it also interleaves the training steps of Crystalformer, CrystalFramer and
lightweight in one process (ratios within each round, robust to a drifting machine speed). ``--against REV``
measures an older revision with the same harness, ``--compile`` adds
``torch.compile``'d models. Results: ``bench/results/<host>.json``, ``.md`` (each target with its ratio) and ``.png``.

Modules, one job each:

- :mod:`~framer.bench.batches`: the crystals (reference batch, MP-like and sweep crystals).
- :mod:`~framer.bench.timing`: medians of repeated calls, wall and CPU seconds, peak memory.
- :mod:`~framer.bench.worker`: one measured case inside a subprocess.
- :mod:`~framer.bench.runner`: the plan, the subprocesses, ``--against`` worktrees, system information.
- :mod:`~framer.bench.targets`: the reference's published figures and the issue's targets.
- :mod:`~framer.bench.report`: markdown table, plot and atomic writes.
"""
