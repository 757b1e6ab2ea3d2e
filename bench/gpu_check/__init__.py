"""One command that tells what matters about framer on a CUDA device in minutes: ``make gpu-check``.

Run from the repository root, with no install step (the lent GPU machine has torch, Lightning and numpy but no
pymatgen, jarvis-tools, mlflow, optuna, jsonargparse or matminer, and no virtual environment)::

    PYTHONPATH=. python3 -m bench.gpu_check                      # DEVICE=cuda, full sizes, <= 8 min on one H100
    python -m bench.gpu_check --device cpu --quick               # every part that runs without CUDA, tiny sizes

It writes ``bench/results/<host>-gpu.{json,md}`` (``-gpu-quick`` / ``-gpu-partial`` for QUICK and ``--only``
runs, which git ignores; ``-gpu-cpu`` for a full-size CPU run). Parts, in order, each with a time budget, each
recording its own status (ok, failed or skipped, with a one-line reason), seconds and figures:

=================  ==========================================================================  =================
part               what                                                                        needs
=================  ==========================================================================  =================
environment        versions, device, optional packages, commit, framer imported from here      torch
correctness        every preset, reference batch: device vs CPU, float64 and float32           torch, numpy
mixed_precision    bf16 / fp16 autocast and TF32 against float32                               torch, numpy
speed              training crystals/s (batch 128, MP- and JARVIS-like), s/epoch, ms/material  torch, numpy
memory             peak CUDA memory per preset at batch 128; largest cell at batch 1           torch, numpy
syncs              host-device synchronisations per training step and where (CUDA only)        torch, numpy
loader             DataLoader crystals/s from a cache against the model's consumption          + lightning
compile            ``torch.compile``: first call and steady-state step against eager           torch, numpy
limit              kept pairs / angle entries of a JARVIS-like epoch, FLOPs, bytes, H100 bound  torch, numpy
cli_fit            ``python -m framer.cli fit`` on the Ewald data, accelerator auto            + jsonargparse,
                                                                                               mlflow, pymatgen
pytest_gpu         ``pytest -m gpu`` on the test files with GPU tests                          + pytest
=================  ==========================================================================  =================

Modules: :mod:`~bench.gpu_check.harness` (settings, budgets, isolation), :mod:`~bench.gpu_check.crystals`
(synthetic crystals with numpy), :mod:`~bench.gpu_check.steps` (models and steps), :mod:`~bench.gpu_check.numerics`,
:mod:`~bench.gpu_check.speed`, :mod:`~bench.gpu_check.pipeline`, :mod:`~bench.gpu_check.limit` (the parts) and
:mod:`~bench.gpu_check.report` (JSON and markdown).
"""
