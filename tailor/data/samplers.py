"""Samplers, and the training loader built on them, whose batches depend only on the seed and the epoch: a run
resumed from a checkpoint draws the same batches as an uninterrupted one (Lightning calls ``set_epoch`` at every
epoch start)."""

from __future__ import annotations

import numpy as np
import torch
from pytorch_metric_learning.samplers import MPerClassSampler
from torch.utils.data import DataLoader, Dataset, Sampler

from tailor.data.datasets import streams
from tailor.runtime import worker_count


class BalancedSampler(Sampler[int]):
    """Draws ``num_samples`` indices with replacement, each with weight ``count(class) ** -power``.

    ``power`` = 0 samples the data as it is, 1 makes every class equally likely, 0.5 (square-root
    balancing) sits between: rare classes are seen more often without repeating a single image endlessly.
    """

    def __init__(self, targets: np.ndarray, power: float = 0.5, seed: int = 0, num_samples: int | None = None):
        targets = np.asarray(targets)
        _, inverse, counts = np.unique(targets, return_inverse=True, return_counts=True)
        weights = counts[inverse].astype(np.float64) ** -power
        self.weights = torch.as_tensor(weights / weights.sum())
        self.num_samples = int(num_samples or len(targets))
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:  # Lightning calls this at every epoch start
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.multinomial(self.weights, self.num_samples, replacement=True, generator=generator).tolist())

    def __len__(self) -> int:
        return self.num_samples


class EpochMPerClassSampler(MPerClassSampler):
    """pytorch-metric-learning's ``MPerClassSampler`` (batches of ``m`` images from each of several classes)
    made reproducible per epoch. The original draws from NumPy's global generator and reshuffles its class
    list in place, so its batches depend on everything drawn before, and a resumed run saw different ones."""

    def __init__(self, labels, m: int, batch_size: int, length_before_new_iter: int, seed: int = 0):
        super().__init__(labels, m=m, batch_size=batch_size, length_before_new_iter=length_before_new_iter)
        self._classes = list(self.labels)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        state = np.random.get_state()
        np.random.seed((self.seed * 100_003 + self.epoch) % 2**32)
        self.labels = list(self._classes)
        try:
            return super().__iter__()  # draws the whole epoch's order here, eagerly
        finally:
            np.random.set_state(state)


class WithItemSeeds(Sampler):
    """Yields ``(index, seed)`` for every index of ``sampler``: the seeds depend only on ``seed``, the epoch and
    the position, and :class:`SeededItems` augments each item with its own. An item's random crop then no
    longer depends on how many random numbers were drawn before it: a resumed run's first batch used to come
    out different, because Lightning creates the loader's iterator at another moment when it resumes."""

    def __init__(self, sampler: Sampler, seed: int = 0):
        self.sampler = sampler
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if callable(getattr(self.sampler, "set_epoch", None)):
            self.sampler.set_epoch(epoch)

    def __iter__(self):
        indices = list(self.sampler)
        generator = torch.Generator().manual_seed(self.seed * 1_000_033 + self.epoch + 1)
        seeds = torch.randint(2**62, (len(indices),), generator=generator).tolist()
        return iter(zip(indices, seeds))

    def __len__(self) -> int:
        return len(self.sampler)


class SeededItems(Dataset):
    """``dataset``'s items, asked for as ``(index, seed)`` (from :class:`WithItemSeeds`): each is made with
    torch's generator seeded with ``seed``, and the generator is put back as it was afterwards."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        # the CPU generator alone: torch.manual_seed also queues a CUDA seeding with a stack trace, per item
        generator = torch.default_generator
        state = generator.get_state()
        generator.manual_seed(seed)
        try:
            return self.dataset[index]
        finally:
            generator.set_state(state)

    def __len__(self) -> int:
        return len(self.dataset)


def training_loader(dataset: Dataset, sampler: Sampler, seed: int, batch_size: int, num_workers: int | str = "auto",
                    drop_last: bool = True) -> DataLoader:
    """A training DataLoader whose batches depend only on the seed and the epoch, whether the run started now
    or resumed: items augmented with their own seeds, and a private generator for the loader's own draw, so
    that torch's global generator (dropout's, reseeded every epoch) is left alone. ``num_workers``: 'auto'
    decodes a streaming dataset in as many workers as there are cores (:func:`tailor.runtime.worker_count`)."""
    num_workers = worker_count(num_workers, streams(dataset))
    return DataLoader(SeededItems(dataset), batch_size=batch_size, sampler=WithItemSeeds(sampler, seed),
                      num_workers=num_workers, drop_last=drop_last, persistent_workers=num_workers > 0,
                      generator=torch.Generator().manual_seed(seed))
