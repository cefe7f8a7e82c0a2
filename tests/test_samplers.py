"""Training batches depend on the seed and the epoch alone: what makes a resumed run repeat an unbroken one."""

import numpy as np
import torch
from torch.utils.data import Dataset

from tailor.data.samplers import BalancedSampler, EpochMPerClassSampler, SeededItems, WithItemSeeds, training_loader

LABELS = np.repeat(np.arange(6), [30, 12, 8, 5, 4, 4])


def _epoch(sampler, epoch: int) -> list:
    sampler.set_epoch(epoch)
    return list(sampler)


def test_m_per_class_batches_ignore_the_global_generator_and_earlier_epochs():
    a = EpochMPerClassSampler(LABELS, m=4, batch_size=12, length_before_new_iter=len(LABELS), seed=5)
    first = _epoch(a, 2)
    b = EpochMPerClassSampler(LABELS, m=4, batch_size=12, length_before_new_iter=len(LABELS), seed=5)
    np.random.seed(123)
    np.random.rand(17)
    _epoch(b, 0), _epoch(b, 1)
    state = np.random.get_state()[1].copy()
    assert _epoch(b, 2) == first  # as if resumed at epoch 2
    assert np.array_equal(np.random.get_state()[1], state)  # NumPy's global generator is left as it was
    assert _epoch(b, 3) != first
    for batch in np.array(first).reshape(-1, 12):
        classes, counts = np.unique(LABELS[batch], return_counts=True)
        assert len(classes) == 3 and (counts == 4).all()


def test_balanced_sampler_equalises_classes_and_repeats_an_epoch():
    sampler = BalancedSampler(LABELS, power=1.0, seed=2, num_samples=6000)
    drawn = _epoch(sampler, 4)
    share = np.bincount(LABELS[drawn], minlength=6) / len(drawn)
    assert np.allclose(share, 1 / 6, atol=0.03)
    assert _epoch(sampler, 4) == drawn and _epoch(sampler, 5) != drawn


class _Noisy(Dataset):
    """An 'augmentation' that is nothing but a draw from torch's global generator."""

    def __len__(self) -> int:
        return 10

    def __getitem__(self, i: int):
        return torch.rand(3) + i, i


def test_seeded_items_do_not_depend_on_draws_made_before_them():
    sampler = WithItemSeeds(BalancedSampler(np.arange(10) % 2, power=0.0, seed=1), seed=1)
    data = SeededItems(_Noisy())
    keys = _epoch(sampler, 3)
    torch.manual_seed(0)
    items = [data[key][0] for key in keys]
    torch.rand(1000)  # someone else drew first: a prefetching loader, a resumed run
    state = torch.get_rng_state()
    again = [data[key][0] for key in keys]
    assert len(items) == len(again) == len(keys) > 0
    assert all(torch.equal(x, y) for x, y in zip(items, again))
    assert torch.equal(torch.get_rng_state(), state)  # the global generator is untouched
    assert not torch.equal(items[0], data[_epoch(sampler, 4)[0]][0])  # another epoch, another augmentation


def test_training_loader_gives_the_same_batches_whatever_was_drawn_before():
    def batches(draws: int):
        loader = training_loader(_Noisy(), BalancedSampler(np.arange(10) % 2, seed=3), seed=3, batch_size=4)
        loader.sampler.set_epoch(1)
        torch.manual_seed(draws)
        torch.rand(draws)
        return [images for images, _ in loader]

    first, second = batches(0), batches(50)
    assert len(first) == len(second) > 0  # batches were produced, as many each time
    assert all(torch.equal(a, b) for a, b in zip(first, second))
