"""The linear probe: class balancing and the fitted head, on hand-made features."""

import torch

from tailor.tasks.probe import balanced_weights, fit_linear_head


def test_balanced_weights_give_every_class_the_same_total():
    targets = torch.tensor([0] * 8 + [1] * 2)
    full = balanced_weights(targets, 2, power=1.0)
    assert torch.isclose(full[:8].sum(), full[8:].sum())
    assert torch.isclose(full.mean(), torch.tensor(1.0))
    none = balanced_weights(targets, 2, power=0.0)
    assert torch.allclose(none, torch.ones(10))
    half = balanced_weights(targets, 2, power=0.5)
    assert half[8] / half[0] == torch.tensor(2.0)  # sqrt(8 / 2)


def test_probe_separates_clusters_and_balancing_rescues_the_rare_class():
    generator = torch.Generator().manual_seed(0)
    centres = torch.tensor([[2.0, 0.0], [0.0, 2.0], [1.2, 1.2]])
    counts = [200, 200, 3]  # the third class is rare and sits between the others
    x = torch.cat([c + 0.45 * torch.randn(n, 2, generator=generator) for c, n in zip(centres, counts)])
    y = torch.cat([torch.full((n,), i) for i, n in enumerate(counts)])
    test_x = torch.cat([c + 0.45 * torch.randn(100, 2, generator=generator) for c in centres])
    test_y = torch.arange(3).repeat_interleave(100)

    def recall_of_rare(power):
        weight, bias = fit_linear_head(x, y, 3, power=power, weight_decay=1e-4)
        predicted = (test_x @ weight.T + bias).argmax(1)
        assert (predicted[:200] == test_y[:200]).float().mean() > 0.8
        return (predicted[200:] == 2).float().mean().item()

    assert recall_of_rare(1.0) > recall_of_rare(0.0) + 0.2


def test_probe_accepts_several_views_of_each_row():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    views = torch.stack([x, x + 0.01])
    weight, bias = fit_linear_head(views, torch.tensor([0, 1]), 2, power=0.0, weight_decay=1e-3)
    assert ((x @ weight.T + bias).argmax(1) == torch.tensor([0, 1])).all()


def test_settings_are_chosen_by_held_out_accuracy_and_one_candidate_needs_no_fits(monkeypatch):
    from tailor.tasks import probe

    generator = torch.Generator().manual_seed(1)
    centres = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    y = torch.arange(2).repeat_interleave(30)
    x = centres[y] + 0.6 * torch.randn(60, 2, generator=generator)
    # a weight decay so strong that the head cannot separate anything loses to a mild one
    grid = [{"power": 0.0, "weight_decay": 1e4}, {"power": 0.0, "weight_decay": 1e-3}]
    chosen, scores = probe.choose_probe_settings(x, y, 2, grid)
    assert chosen == grid[1] and len(scores) == 2 and scores[1] > scores[0]

    def no_fit(*args, **kwargs):
        raise AssertionError("a probe was fitted to choose among one candidate")

    monkeypatch.setattr(probe, "fit_linear_head", no_fit)
    assert probe.choose_probe_settings(x, y, 2, grid[:1]) == (grid[0], [])
