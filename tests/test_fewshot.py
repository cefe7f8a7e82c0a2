"""Few-shot: the episode sampler, prototype maths, confidence intervals, and the protonet run."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from tailor.data.episodes import EpisodeError, EpisodeSampler, split_classes
from tailor.evaluation.fewshot import (centre_and_normalise, evaluate_episodes, mean_confidence_interval,
                                       prototype_logits)

from conftest import run_tailor

LABELS = ["a"] * 10 + ["b"] * 8 + ["c"] * 6 + ["d"] * 3 + ["e"] * 12


def test_episodes_never_leak_between_support_and_query():
    sampler = EpisodeSampler(LABELS, n_way=3, k_shot=2, q_query=4, seed=1)
    labels = np.array(LABELS)
    for episode in sampler.episodes(200):
        support, query = episode.support.reshape(-1), episode.query.reshape(-1)
        assert not set(support) & set(query)
        assert len(set(support) | set(query)) == 3 * 6
        for i, c in enumerate(episode.classes):  # every row belongs to its position's class
            assert (labels[episode.support[i]] == c).all() and (labels[episode.query[i]] == c).all()
        assert episode.query_labels().tolist() == [0] * 4 + [1] * 4 + [2] * 4


def test_classes_with_too_few_examples_are_excluded_and_listed():
    sampler = EpisodeSampler(LABELS, n_way=3, k_shot=2, q_query=5, seed=0)
    assert sampler.excluded == {"c": 6, "d": 3}
    assert sampler.classes == ["a", "b", "e"]
    assert all("c" not in e.classes and "d" not in e.classes for e in sampler.episodes(50))
    with pytest.raises(EpisodeError, match=r"need 4 classes with at least 7 examples.*d \(3\)"):
        EpisodeSampler(LABELS, n_way=4, k_shot=2, q_query=5)


def test_episodes_are_reproducible_and_restricted():
    first = [e.support.tolist() for e in EpisodeSampler(LABELS, 2, 1, 2, seed=5).episodes(20)]
    again = [e.support.tolist() for e in EpisodeSampler(LABELS, 2, 1, 2, seed=5).episodes(20)]
    other = [e.support.tolist() for e in EpisodeSampler(LABELS, 2, 1, 2, seed=6).episodes(20)]
    assert first == again and first != other
    restricted = EpisodeSampler(LABELS, 2, 1, 2, classes=["a", "e"])
    assert all(set(e.classes) == {"a", "e"} for e in restricted.episodes(10))


def test_class_splits_are_disjoint_and_cover_everything():
    train, val, test = split_classes([f"c{i}" for i in range(20)], seed=3)
    assert len(train) == 12 and len(val) == 4 and len(test) == 4
    assert not (set(train) & set(val)) and not (set(train) & set(test)) and not (set(val) & set(test))
    assert split_classes([f"c{i}" for i in range(20)], seed=3) == (train, val, test)


def test_prototype_logits_are_negative_squared_distances():
    support = torch.tensor([[[0.0, 0.0], [2.0, 0.0]], [[0.0, 4.0], [0.0, 2.0]]])  # prototypes (1,0) and (0,3)
    query = torch.tensor([[1.0, 1.0], [0.0, 3.0]])
    logits = prototype_logits(support, query)
    assert torch.allclose(logits, torch.tensor([[-1.0, -5.0], [-10.0, 0.0]]))
    centred = centre_and_normalise(torch.tensor([[3.0, 4.0], [1.0, 0.0]]), torch.tensor([1.0, 0.0]))
    assert torch.allclose(centred, torch.tensor([[2 / 20**0.5, 4 / 20**0.5], [0.0, 0.0]]))


def test_confidence_interval():
    mean, half = mean_confidence_interval(np.array([0.0, 1.0, 0.0, 1.0]))
    assert mean == 0.5 and half == pytest.approx(1.96 * np.std([0, 1, 0, 1], ddof=1) / 2)


def test_episode_accuracy_on_separable_and_on_random_features():
    labels = [c for c in "abcde" for _ in range(20)]
    centres = torch.eye(5) * 10
    separable = torch.stack([centres["abcde".index(c)] + torch.randn(5) * 0.1 for c in labels])
    sampler = EpisodeSampler(labels, n_way=5, k_shot=1, q_query=5, seed=0)
    assert evaluate_episodes(separable, sampler, count=50)["accuracy"] == 1.0
    noise = torch.randn(100, 5, generator=torch.Generator().manual_seed(0))
    chance = evaluate_episodes(noise, sampler, count=300)
    assert abs(chance["accuracy"] - 0.2) < 0.05 and chance["ci95"] > 0


def test_protonet_run_on_tiny_data(tiny_dataset, tmp_path):
    styles = pd.read_csv(tiny_dataset / "styles.csv")
    styles[styles["articleType"] == "Watches"].to_csv(tmp_path / "base.csv", index=False)
    result = run_tailor(
        "run", "-c", "configs/protonet.gin", "-p", f"FashionDataset.root_dir='{tiny_dataset}'",
        "-p", f"FashionDataset.csv_file='{tmp_path}/base.csv'",
        "-p", f"evaluate/FashionDataset.csv_file='{tiny_dataset}/styles.csv'",
        "-p", "fewshot.n_way=2", "-p", "fewshot.shots=(1, 3)", "-p", "fewshot.q_query=4",
        "-p", "fewshot.episodes=30", "-p", f"main.output_dir='{tmp_path}'", "-p", "main.num_epochs=0")
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "protonet" / "results.json").read_text())
    scorers = ("raw", "cl2n", "calibrated", "cl2n + names", "calibrated + names")
    assert set(results["fewshot"]) == {f"2-way {k}-shot ({t})" for k in (1, 3) for t in scorers}
    # one base class is too few to choose a name weight: it stays 0, and the names scorers are the visual ones
    assert results["names"]["cl2n"]["weight"] == 0 and results["names"]["calibrated"]["weight"] == 0
    for k in (1, 3):
        assert (results["fewshot"][f"2-way {k}-shot (cl2n + names)"]["accuracy"]
                == pytest.approx(results["fewshot"][f"2-way {k}-shot (cl2n)"]["accuracy"]))
    one = results["fewshot"]["2-way 1-shot (cl2n)"]
    assert one["episodes"] == 30 and one["classes"] == 2 and 0.5 <= one["accuracy"] <= 1.0  # Sunglasses vs Tshirts
    assert "| 2-way 3-shot (cl2n) |" in result.stdout
    report = (tmp_path / "protonet" / "report.html").read_text()
    assert "Few-shot episodes" in report and "novel classes (episodes draw from" in report
    assert "Confusion matrix" not in report and "Per class" not in report  # episodes are not scored per class

    too_many = run_tailor("run", "-c", "configs/protonet.gin", "-p", f"FashionDataset.root_dir='{tiny_dataset}'",
                          "-p", f"FashionDataset.csv_file='{tmp_path}/base.csv'",
                          "-p", f"evaluate/FashionDataset.csv_file='{tiny_dataset}/styles.csv'",
                          "-p", "fewshot.shots=(20,)", "-p", f"main.output_dir='{tmp_path}'", "-p", "main.name='x'",
                          "-p", "main.num_epochs=0")
    assert too_many.returncode == 2
    assert "5-way 20-shot episodes with 15 queries need 5 classes" in too_many.stderr.strip().splitlines()[-1]


def test_a_few_shot_run_without_novel_classes_says_what_to_bind(tiny_dataset, tmp_path):
    from tailor.data.datasets import FashionDataset, RunData
    from tailor.errors import ConfigError
    from tailor.recipes.fewshot import run_fewshot

    data = RunData(train=FashionDataset(tiny_dataset, tiny_dataset / "styles.csv"), test=None)
    with pytest.raises(ConfigError, match="evaluate/FashionDataset.csv_file"):
        run_fewshot(tmp_path, data, progress=False)
