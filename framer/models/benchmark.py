"""Time the model alone on random crystals: ``python -m framer.models.benchmark --preset crystalframer``.

Reports the median forward time (eval, no grad) and training-step time (forward, L1 loss, backward, AdamW) on a
batch of 16 random crystals (268 atoms by default), as wall-clock and process CPU seconds.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from framer.models import CrystalFramer
from framer.testing import make_batch, random_crystal


def benchmark_batch(num_crystals: int = 16, total_atoms: int = 268, seed: int = 0, dtype=torch.float32):
    """Random crystals whose sizes sum to ``total_atoms``."""
    rng = np.random.default_rng(seed)
    cuts = np.sort(rng.choice(np.arange(1, total_atoms), size=num_crystals - 1, replace=False))
    sizes = np.diff(np.concatenate([[0], cuts, [total_atoms]]))
    return make_batch([random_crystal(int(n), rng) for n in sizes], dtype=dtype)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(preset: str, repeats: int = 3, device: str = "cpu", **batch_kwargs) -> dict[str, float]:
    """Median wall and process-CPU seconds of a forward pass and a training step for one preset."""
    device = torch.device(device)
    torch.manual_seed(0)
    model = CrystalFramer.preset(preset).to(device)
    batch = benchmark_batch(**batch_kwargs).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    target = torch.zeros(len(batch.sizes), device=device)

    def step() -> None:
        optimizer.zero_grad()
        loss = torch.nn.functional.l1_loss(model(batch), target)
        loss.backward()
        optimizer.step()

    def forward() -> None:
        with torch.no_grad():
            model(batch)

    model.train()
    step()  # warm-up; also freezes the sigma statistics
    times = {}
    for name, fn, mode in (("train_step", step, True), ("forward", forward, False)):
        model.train(mode)
        wall, cpu = [], []
        for _ in range(repeats):
            _sync(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            _sync(device)
            wall.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
        times[f"{name}_s"] = statistics.median(wall)
        times[f"{name}_cpu_s"] = statistics.median(cpu)  # less sensitive to other load on shared machines
    times["atoms"] = int(batch.sizes.sum())
    times["pairs"] = int((batch.sizes**2).sum())
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", nargs="+", default=["crystalformer", "crystalframer"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--atoms", type=int, default=268)
    args = parser.parse_args()
    for preset in args.preset:
        result = run(preset, args.repeats, args.device, total_atoms=args.atoms)
        print(preset, " ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
