"""A training DataLoader whose order is a function of (seed, epoch) and that resumes in the middle of an epoch.

:class:`EpochShuffleSampler` draws epoch ``e``'s permutation from ``numpy.random.default_rng([seed, e])``, never
from the global generator; :class:`ResumableDataLoader` reports ``{seed, epoch, batches}`` through
``state_dict()``, which Lightning stores in every checkpoint and hands back on resume, and then skips the batches
already trained on. With :class:`framer.callbacks.RandomState`, a resumed single-device run takes the same steps on
the same batches as an uninterrupted one. Multi-device runs (Lightning's ``DistributedSampler``) and
``overfit_batches`` resume as Lightning does by default.

Why not torchdata's ``StatefulDataLoader``: with its own shuffling, the epochs after a resume differ from those of an
uninterrupted run, so it would need this position-keeping sampler anyway; and it is not on the GPU image.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler


class EpochShuffleSampler(Sampler[int]):
    """Indices ``0..n-1`` in the order ``default_rng([seed, epoch]).permutation(n)`` (``seed`` non-negative)."""

    def __init__(self, n: int, seed: int) -> None:
        self.n = int(n)
        self.seed = int(seed)
        self.epoch = 0
        self._epoch_set = True  # False after a pass, until set_epoch is called again
        self._resume: tuple[int, int] | None = None  # (epoch, first position) of a pass that resumes mid-epoch
        #: epoch and first position of the current pass (set when it starts)
        self.pass_epoch = 0
        self.pass_start = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self._epoch_set = True

    def resume_at(self, epoch: int, position: int) -> None:
        """Start the next pass over ``epoch`` at ``position`` (the samples before it were used already)."""
        self._resume = (int(epoch), int(position))

    def permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, int(epoch)]).permutation(self.n)

    def __iter__(self) -> Iterator[int]:
        if not self._epoch_set:  # used outside Lightning: a new pass is a new epoch
            self.epoch += 1
        self._epoch_set = False
        start = 0
        if self._resume is not None and self._resume[0] == self.epoch:
            start = self._resume[1]
        self._resume = None
        self.pass_epoch, self.pass_start = self.epoch, start
        yield from self.permutation(self.epoch)[start:].tolist()

    def __len__(self) -> int:
        return self.n


class ResumableDataLoader(DataLoader):
    """A DataLoader (use it with an :class:`EpochShuffleSampler`) whose position Lightning saves in checkpoints.

    It takes the same arguments as ``DataLoader``, so Lightning can rebuild it with another sampler; with any other
    sampler ``state_dict()`` is empty and resuming is Lightning's default.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._yielded = 0  # batches handed out by the current pass

    def __iter__(self) -> Iterator[Any]:
        base = super().__iter__()
        self._yielded = 0
        return self._counted(base)

    def _counted(self, base: Iterator[Any]) -> Iterator[Any]:
        for batch in base:
            self._yielded += 1  # counted as it is handed to the training loop
            yield batch

    def state_dict(self) -> dict[str, Any]:
        sampler = self.sampler
        if not isinstance(sampler, EpochShuffleSampler):
            return {}
        done = sampler.pass_start // max(self.batch_size or 1, 1) + self._yielded
        return {"seed": sampler.seed, "epoch": sampler.pass_epoch, "batches": int(done)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        sampler = self.sampler
        if not isinstance(sampler, EpochShuffleSampler) or not state_dict:
            return
        sampler.seed = int(state_dict["seed"])
        epoch, batches = int(state_dict["epoch"]), int(state_dict["batches"])
        if batches >= len(self):  # the saved epoch was complete: continue with the next one
            sampler.set_epoch(epoch + 1)
            return
        sampler.set_epoch(epoch)
        sampler.resume_at(epoch, batches * (self.batch_size or 1))


def shuffle_seed() -> int:
    """Seed for the training order: the seed of torch's default generator (``seed_everything`` sets it)."""
    return int(torch.initial_seed()) % (2**63)
