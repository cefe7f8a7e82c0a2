"""Episodic few-shot learning: the Relation Network's maths on hand-made tensors, any input size, episodic
training of both methods, and the relation run end to end on tiny real images."""

import json

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from conftest import REPO, assert_same_curves, kill_after_first_epoch, make_tiny_dataset, run_tailor
from tailor.data.episodes import EpisodeSampler
from tailor.models.fewshot_nets import Conv4, RelationModule, relation_scores
from tailor.tasks.episodic import EpisodeDataset, EpisodicTask, FewShotNet


def test_relation_scores_are_probabilities_for_every_query_and_class():
    torch.manual_seed(0)
    relation = RelationModule(8, channels=8).eval()
    scores = relation_scores(relation, torch.randn(5, 2, 8, 6, 6), torch.randn(7, 8, 6, 6))
    assert scores.shape == (7, 5) and ((scores > 0) & (scores < 1)).all()


def test_a_class_is_the_mean_of_its_support_maps():
    torch.manual_seed(0)
    relation = RelationModule(4, channels=8).eval()
    one = torch.randn(3, 1, 4, 5, 5)
    query = torch.randn(2, 4, 5, 5)
    repeated = one.expand(3, 4, 4, 5, 5)  # the same image four times is the same class as one image
    assert torch.allclose(relation_scores(relation, one, query), relation_scores(relation, repeated, query))
    pair = torch.randn(3, 2, 4, 5, 5)
    assert torch.allclose(relation_scores(relation, pair, query), relation(pair.mean(dim=1), query))


def test_relation_pairs_each_query_with_each_class_in_order():
    """Swapping two classes swaps their score columns; swapping queries swaps rows."""
    torch.manual_seed(1)
    relation = RelationModule(4, channels=8).eval()
    classes, queries = torch.randn(3, 4, 5, 5), torch.randn(2, 4, 5, 5)
    scores = relation(classes, queries)
    assert torch.allclose(relation(classes[[2, 1, 0]], queries), scores[:, [2, 1, 0]], atol=1e-6)
    assert torch.allclose(relation(classes, queries[[1, 0]]), scores[[1, 0]], atol=1e-6)


@pytest.mark.parametrize("size", [(84, 84), (100, 60), (224, 224)])
def test_any_input_size_works(size):
    conv4, relation = Conv4().eval(), RelationModule(64).eval()
    maps = conv4(torch.randn(6, 3, *size))
    assert maps.shape[:2] == (6, 64)
    scores = relation_scores(relation, maps[:4].view(2, 2, *maps.shape[1:]), maps[4:])
    assert scores.shape == (2, 2)


def test_wide_pretrained_maps_go_through_an_adapter():
    relation = RelationModule(1280).eval()
    assert relation_scores(relation, torch.randn(5, 1, 1280, 7, 7), torch.randn(3, 1280, 7, 7)).shape == (3, 5)


def _separable_items(classes: int = 6, per_class: int = 10, dim: int = 16):
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(classes, dim, generator=generator) * 3
    items = centres.repeat_interleave(per_class, 0) + torch.randn(classes * per_class, dim, generator=generator)
    labels = [f"c{i}" for i in range(classes) for _ in range(per_class)]
    return items, labels


@pytest.mark.parametrize("method", ["protonet", "relation"])
def test_episodic_training_learns_separable_classes(method):
    torch.manual_seed(0)
    items, labels = _separable_items()
    if method == "relation":
        items = items[:, :, None, None].expand(-1, -1, 3, 3).contiguous()  # 16-channel 3×3 "maps"
        net = FewShotNet("relation", torch.nn.Identity(), RelationModule(16, channels=16))
    else:
        net = FewShotNet("protonet", torch.nn.Identity(), torch.nn.Linear(16, 8), scale=1.0)
    task = EpisodicTask(net, lr=3e-3)
    episodes = EpisodeDataset(EpisodeSampler(labels, 3, 1, 4, seed=0), items.__getitem__, 60)
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for batch in (episodes[i] for i in range(len(episodes))):
        loss, scores, targets = task._episode(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    net.eval()
    with torch.no_grad():
        accuracy = sum(float((task._episode(episodes[i])[1].argmax(1) == task._episode(episodes[i])[2]).float().mean())
                       for i in range(10)) / 10
    assert sum(losses[-10:]) < sum(losses[:10]) and accuracy > 0.9


def test_an_untrained_protonet_head_is_the_cl2n_baseline():
    """The trained Prototypical Network starts from the training-free CL2N prototypes (its head is the
    identity on centred features), so episodic training refines the baseline instead of first undoing it."""
    from tailor.evaluation.fewshot import centre_and_normalise, prototype_logits
    from tailor.models.embedding import Projection

    generator = torch.Generator().manual_seed(0)
    base, items = torch.rand(40, 12, generator=generator), torch.rand(15, 12, generator=generator)
    net = FewShotNet("protonet", torch.nn.Identity(), Projection.identity(12, base.mean(dim=0)), scale=10.0).eval()
    embedded = net.embed_items(items)
    cl2n = centre_and_normalise(items, base.mean(dim=0))
    assert torch.allclose(embedded, cl2n, atol=1e-6)
    support, query = embedded[:6].view(3, 2, 12), embedded[6:]
    expected = prototype_logits(cl2n[:6].view(3, 2, 12), cl2n[6:])
    assert torch.equal(net.scores(support, query).argmax(1), expected.argmax(1))
    assert torch.allclose(net.scores(support, query), 10.0 * expected, atol=1e-5)


def test_a_whitening_head_makes_the_base_classes_within_class_covariance_the_identity():
    """The default start of the trained Prototypical Network: after the head (before unit length), every base
    class varies alike in every direction, so variation all categories share no longer swamps distances."""
    from tailor.models.embedding import Projection

    generator = torch.Generator().manual_seed(1)
    mixing = torch.randn(6, 6, generator=generator)  # correlated, unequal within-class spread
    centres = 5 * torch.randn(4, 6, generator=generator)
    targets = torch.arange(4).repeat_interleave(50)
    features = centres[targets] + torch.randn(200, 6, generator=generator) @ mixing
    projection = Projection.whitening(features, targets, alpha=0.0)
    with torch.no_grad():
        mapped = projection.layers(features - projection.mean).double()
    centred = torch.cat([mapped[targets == c] - mapped[targets == c].mean(0) for c in range(4)])
    assert torch.allclose(centred.T @ centred / (200 - 4), torch.eye(6, dtype=torch.float64), atol=1e-4)
    assert torch.allclose(projection.mean, features.mean(0))
    assert torch.allclose(projection(features).norm(dim=1), torch.ones(200))


def test_a_reduced_whitening_keeps_the_directions_that_separate_classes():
    """With ``dim`` set, the whitened start keeps the directions where classes differ, not the ones with the
    most variance: here every class spreads widely along the first axis and the classes differ along the second."""
    from tailor.models.embedding import Projection

    generator = torch.Generator().manual_seed(2)
    targets = torch.arange(3).repeat_interleave(60)
    features = torch.randn(180, 5, generator=generator) * torch.tensor([20.0, 0.3, 1.0, 1.0, 1.0])
    features[:, 1] += 3.0 * targets  # the classes: 10 within-class standard deviations apart
    for alpha in (None, 0.01):  # Ledoit–Wolf shrinkage, or a fixed ridge
        projection = Projection.whitening(features, targets, alpha=alpha, dim=1)
        direction = projection.layers[0].weight[0]
        assert direction[1].abs() > 0.99 * direction.norm()  # the second axis, not the widest first one
        with torch.no_grad():
            mapped = projection.layers(features - projection.mean)[:, 0]
        assert (mapped.argsort().argsort() // 60 == targets).float().mean() > 0.95 or \
            ((-mapped).argsort().argsort() // 60 == targets).float().mean() > 0.95  # sorted by class either way


def test_whitening_too_few_vectors_without_shrinkage_is_a_clear_error():
    from tailor.models.embedding import Projection

    features, targets = torch.randn(6, 8), torch.tensor([0, 0, 0, 1, 1, 1])
    with pytest.raises(ValueError, match="singular; use alpha > 0"):
        Projection.whitening(features, targets, alpha=0.0)
    assert Projection.whitening(features, targets).layers[0].weight.isfinite().all()  # Ledoit–Wolf copes


def test_relation_loss_is_mse_against_one_hot_targets():
    torch.manual_seed(0)
    net = FewShotNet("relation", torch.nn.Identity(), RelationModule(4, channels=4))
    support, query = torch.randn(3, 2, 4, 3, 3), torch.randn(6, 4, 3, 3)
    loss, scores, targets = EpisodicTask(net)._episode((support, query))
    assert targets.tolist() == [0, 0, 1, 1, 2, 2]  # queries come class by class
    assert float(loss) == pytest.approx(float(F.mse_loss(scores, F.one_hot(targets, 3).float())))


def test_episode_dataset_gives_new_episodes_each_epoch_and_repeats_them_on_resume():
    items, labels = _separable_items()
    data = EpisodeDataset(EpisodeSampler(labels, 2, 1, 2, seed=3), items.__getitem__, 5)
    first = data[0][0]
    data.epoch = 1
    assert not torch.equal(data[0][0], first)
    data.epoch = 0
    assert torch.equal(data[0][0], first)
    support, query = data[0]
    assert support.shape == (2, 1, 16) and query.shape == (4, 16)


@pytest.fixture(scope="module")
def six_classes(tmp_path_factory):
    root = make_tiny_dataset(tmp_path_factory.mktemp("six"), ["Watches", "Sunglasses", "Tshirts", "Shirts",
                                                               "Casual Shoes", "Handbags"], 10)
    styles = pd.read_csv(root / "styles.csv")
    styles[styles["articleType"].isin(["Watches", "Sunglasses", "Tshirts"])].to_csv(root / "base.csv", index=False)
    return root


def _relation_args(root, out, *bindings) -> list[str]:
    return ["run", "-c", "configs/relation.gin", "-p", f"FashionDataset.root_dir='{root}'",
            "-p", f"FashionDataset.csv_file='{root}/base.csv'", "-p", f"evaluate/FashionDataset.csv_file='{root}/styles.csv'",
            "-p", "fewshot.n_way=2", "-p", "fewshot.shots=(1, 2)", "-p", "fewshot.q_query=3", "-p", "fewshot.episodes=20",
            "-p", "fewshot.episodes_per_epoch=6", "-p", "fewshot.val_episodes=4", "-p", "main.num_epochs=2",
            "-p", "make_trainer.progress=False", "-p", f"main.output_dir='{out}'", *bindings]


def _relation_run(root, out, *bindings):
    return run_tailor(*_relation_args(root, out, *bindings))


@pytest.mark.slow
def test_relation_runs_repeat_and_a_killed_one_resumes_exactly(six_classes, tmp_path):
    """The same seed gives the same network whether the frozen features were computed or came from the cache
    (a first run fills it), and a run killed after its first epoch ends like one never interrupted."""
    bindings = ["-p", "fewshot.embedding='conv4'", "-p", "fewshot.image_size=40", "-p", "main.num_epochs=4"]
    runs = {}
    for name in ("first", "cached"):
        result = _relation_run(six_classes, tmp_path, *bindings, "-p", f"main.name='{name}'")
        assert result.returncode == 0, result.stderr[-3000:]
        runs[name] = json.loads((tmp_path / name / "results.json").read_text())
    args = _relation_args(six_classes, tmp_path, *bindings, "-p", "main.name='broken'")
    assert kill_after_first_epoch(args, tmp_path / "broken", REPO) < 3
    resumed = run_tailor(*args)
    assert resumed.returncode == 0 and "resuming" in resumed.stderr, resumed.stderr[-3000:]
    runs["broken"] = json.loads((tmp_path / "broken" / "results.json").read_text())

    def accuracies(results):
        return {name: scores["accuracy"] for name, scores in results["fewshot"].items()}

    for name in ("cached", "broken"):
        assert accuracies(runs[name]) == accuracies(runs["first"]), name
        assert runs[name]["best_val_acc"] == runs["first"]["best_val_acc"], name
    assert_same_curves(tmp_path / "first", tmp_path / "broken")


@pytest.mark.parametrize("embedding", ["pretrained", "conv4"])
def test_relation_run_trains_validates_and_scores_novel_classes(six_classes, tmp_path, embedding):
    result = _relation_run(six_classes, tmp_path, "-p", f"fewshot.embedding='{embedding}'",
                           "-p", "fewshot.image_size=40")
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "relation"
    results = json.loads((run_dir / "results.json").read_text())
    assert results["method"] == "relation" and results["embedding"] == embedding
    assert results["train_episodes"] == 12 and results["epochs"] == 2 and results["best_val_acc"] is not None
    names = set(results["fewshot"])
    assert {"2-way 1-shot (relation, trained)", "2-way 2-shot (relation, trained)", "2-way 1-shot (cl2n)"} <= names
    for scores in results["fewshot"].values():
        assert scores["classes"] == 3 and scores["episodes"] == 20 and 0.0 <= scores["accuracy"] <= 1.0
    assert (run_dir / "fewshot_net.pt").is_file() and (run_dir / "curves.png").is_file()
    assert torch.load(run_dir / "fewshot_net.pt", weights_only=True)["method"] == "relation"
    assert "| 2-way 1-shot (relation, trained) |" in result.stdout


def test_trained_protonet_and_disjoint_validation_classes(six_classes, tmp_path):
    result = _relation_run(six_classes, tmp_path, "-p", "fewshot.method='protonet'", "-p", "fewshot.validation='novel'",
                           "-p", "fewshot.q_query=3")
    # two novel classes would be needed for validation and two for testing: three novel classes are too few
    assert result.returncode == 2 and "need 2 classes" in result.stderr
    ok = _relation_run(six_classes, tmp_path, "-p", "fewshot.method='protonet'", "-p", "main.name='proto'")
    assert ok.returncode == 0, ok.stderr[-3000:]
    results = json.loads((tmp_path / "proto" / "results.json").read_text())
    assert results["method"] == "protonet" and "2-way 2-shot (protonet, trained)" in results["fewshot"]
    unknown = _relation_run(six_classes, tmp_path, "-p", "fewshot.method='protonet'", "-p", "fewshot.head_start='pca'",
                            "-p", "main.name='pca'")
    assert unknown.returncode == 2 and "unknown fewshot.head_start 'pca'" in unknown.stderr
