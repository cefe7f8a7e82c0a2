"""Categories from their names: the offline text model, the taxonomy, the name map and head, the seen /
name-only accounting, and name-only classes end to end (run, evaluate, predict, enroll, export, report)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import SAMPLE, make_tiny_dataset, run_tailor
from tailor.evaluation.metrics import evaluate_scores, per_class_markdown
from tailor.names.fit import NameSettings, choose_balance
from tailor.names.head import NameHead
from tailor.names.semantic_map import fit_semantic_map
from tailor.names.taxonomy import catalog_taxonomy, read_categories, write_categories
from tailor.names.text import TextEncoder, category_phrase, words


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("the text model tried to use the network")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_the_text_model_loads_from_the_wheel_offline_and_knows_related_names(no_network, monkeypatch):
    import wordllama
    monkeypatch.setattr(wordllama.WordLlama, "load", classmethod(lambda *a, **k: pytest.fail("WordLlama.load")))
    encoder = TextEncoder()
    vectors = encoder.embed(["kurtis", "kurtas", "trousers", ""])
    assert vectors.shape == (4, encoder.dim) and encoder.dim == 256
    assert torch.allclose(vectors[:3].norm(dim=1), torch.ones(3), atol=1e-5)
    assert vectors[3].abs().sum() == 0  # an empty text: a zero row, not NaN
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.3
    assert torch.equal(TextEncoder().embed(["kurtis"]), encoder.embed(["kurtis"]))  # the same on every load


def test_a_category_is_embedded_as_plain_words_with_its_parents():
    assert words("Tshirts") == "t shirts" and words("Kurta Sets") == "kurta sets"
    assert words("Perfume and Body Mist") == "perfume and body mist"
    assert category_phrase("Kurtis", ("Topwear", "Apparel")) == "kurtis topwear apparel"
    assert category_phrase("Ties", ("Ties", "Accessories")) == "ties accessories"  # a parent named as itself


def test_the_taxonomy_is_written_and_read_back_and_classes_txt_still_works(tmp_path):
    frame = pd.DataFrame({"label": ["Ties", "Ties", "Ties", "Kurtis"],
                          "subCategory": ["Ties", "Ties", "Accessories", "Topwear"],
                          "masterCategory": ["Accessories"] * 3 + ["Apparel"]})
    assert catalog_taxonomy(frame) == {"Kurtis": ("Topwear", "Apparel"), "Ties": ("Ties", "Accessories")}
    listed = read_categories(write_categories(frame, tmp_path / "categories.csv"))
    assert listed == {"Kurtis": ("Topwear", "Apparel"), "Ties": ("Ties", "Accessories")}
    (tmp_path / "classes.txt").write_text("Kurtis\nTies\n\n")
    assert read_categories(tmp_path / "classes.txt") == {"Kurtis": (), "Ties": ()}


def _linear_world(classes: int = 12, per_class: int = 20, dim: int = 64, seed: int = 0):
    """Images whose features are a fixed linear function of their category's name vector, plus noise."""
    g = torch.Generator().manual_seed(seed)
    names = torch.nn.functional.normalize(torch.randn(classes, 16, generator=g), dim=1)
    mixing = torch.randn(16, dim, generator=g)
    targets = torch.arange(classes).repeat_interleave(per_class)
    features = names[targets] @ mixing + 0.05 * torch.randn(len(targets), dim, generator=g)
    return features, targets, names


def test_the_name_map_names_categories_it_never_saw_in_a_linear_world():
    features, targets, names = _linear_world()
    seen = targets < 8
    semantic = fit_semantic_map(features[seen], targets[seen], names[:8], gamma=1.0, lam=0.1)
    unseen = ~seen
    scores = semantic.scores(features[unseen], names[8:])
    assert (scores.argmax(1) == targets[unseen] - 8).float().mean() > 0.9  # chance: 0.25
    weight, bias = semantic.head_rows(names[8:], scale=2.0, shift=-1.0)  # the same scores as head rows
    assert torch.allclose(features[unseen] @ weight.T + bias, 2.0 * scores - 1.0, atol=1e-3)


def _head(classes=("a", "b"), dim: int = 6, scale: float = 2.0, shift: float = -1.0) -> NameHead:
    g = torch.Generator().manual_seed(1)
    inet_w = torch.zeros(4, dim)
    inet_w[0, 0] = inet_w[1, 1] = inet_w[2, 2] = inet_w[3, 3] = 10.0  # feature i → ImageNet class i
    inet_vectors = torch.eye(4, 5)
    names = torch.nn.functional.normalize(torch.tensor([[1.0, 0, 0, 0, 0], [0, 1.0, 0, 0, 0]]), dim=1)
    return NameHead(list(classes), names[: len(classes)], [dim], [inet_w], [torch.zeros(4)], inet_vectors,
                    torch.randn(dim, 5, generator=g), torch.zeros(5), (0.0, 1.0, 0.0, 1.0), scale, shift, top=2)


def test_the_name_head_scores_by_imagenet_semantics_and_survives_its_state():
    head = _head()
    x = torch.zeros(1, 6)
    x[0, 1] = 1.0  # ImageNet class 1 (named like "b") dominates
    conse, mapped = head.scores(x)
    assert conse.argmax(1).item() == 1 and conse[0, 1] > 0.99
    assert torch.allclose(head(x), 2.0 * (conse + mapped) - 1.0)
    again = NameHead.from_state(head.state())
    assert torch.equal(again(x), head(x)) and again.classes == ["a", "b"]
    head.add_class("c", torch.tensor([0, 0, 1.0, 0, 0]))
    assert head(x).shape == (1, 3) and head.subset(["c"]).classes == ["c"]


def test_seen_name_only_and_unknown_rows_are_counted_apart_on_hand_made_scores():
    classes = ["shirt", "shoe", "tie"]  # "tie" is known by name only
    scores = np.array([[0.9, 0.1, 0.0],   # shirt → right
                       [0.2, 0.7, 0.1],   # shoe  → right
                       [0.5, 0.1, 0.4],   # tie   → wrong at top-1, right at top-2
                       [0.1, 0.2, 0.7],   # tie   → right
                       [0.3, 0.3, 0.4]])  # belt: the model does not know it
    result = evaluate_scores(scores, ["shirt", "shoe", "tie", "tie", "belt"], classes,
                             {"shirt": 3, "shoe": 2, "tie": 0}, name_only=["tie"])
    assert result.top1 == pytest.approx(3 / 5)
    assert result.seen_top1 == pytest.approx(1.0) and result.num_name_only == 2
    assert result.name_only_top1 == pytest.approx(0.5) and result.name_only_top5 == pytest.approx(1.0)
    data = result.as_dict()
    assert data["num_unseen_class_rows"] == 3 and data["num_unknown_class_rows"] == 1
    rows = {c["class"]: c for c in data["per_class"]}
    assert rows["tie"]["name_only"] and not rows["shirt"]["name_only"] and not rows["belt"]["seen"]
    table = per_class_markdown(result)
    assert "|tie†|" in table and "|belt\\*|" in table and "known by name only" in table
    plain = evaluate_scores(scores, ["shirt", "shoe", "tie", "tie", "belt"], classes)  # no names: as before
    assert plain.num_name_only == 0 and "num_name_only_rows" not in plain.as_dict()


def test_the_balance_keeps_the_trained_categories_within_the_allowed_loss():
    features, targets, names = _linear_world(classes=9, per_class=15, seed=2)
    classes = [f"c{i}" for i in range(9)]
    taxonomy = {c: () for c in classes}
    head = _head(dim=features.shape[1])
    knowledge = type("K", (), {"imagenet_vectors": torch.randn(4, 256),
                               "imagenet_heads": [(head.imagenet_weight_0, head.imagenet_bias_0)]})()
    from tailor.names import fit as fit_module
    from tailor.tasks.probe import fit_linear_heads
    fit_probe = lambda f, t, n: fit_linear_heads(f, t, n, [features.shape[1]], power=1.0, weight_decay=1e-3)
    loose = choose_balance(features, targets, classes, [], taxonomy, [features.shape[1]], knowledge, fit_probe,
                           NameSettings(max_seen_loss=1.0))
    strict = choose_balance(features, targets, classes, [], taxonomy, [features.shape[1]], knowledge, fit_probe,
                            NameSettings(max_seen_loss=0.0))
    assert strict.seen_top1 >= strict.seen_top1_without_names - 1e-9
    assert loose.name_only_top1 + loose.name_only_top5 >= strict.name_only_top1 + strict.name_only_top5
    assert {row["shift"] for row in strict.table} == set(fit_module.SHIFTS)


NAMES_CONFIG = """
main.method = 'transfer'
main.num_epochs = 0
main.seed = 0
main.output_dir = '{out}'
FashionDataset.root_dir = '{root}'
FashionDataset.csv_file = '{root}/train.csv'
evaluate/FashionDataset.csv_file = '{root}/styles.csv'
evaluate.group = 'all'
evaluate.tta = False
TransferNet.image_size = 64
TransferNet.backbone = 'efficientnet_lite0'
make_trainer.progress = False
names.enabled = True
"""


@pytest.fixture(scope="module")
def names_run(tmp_path_factory) -> Path:
    """A probe on three real categories that also carries Belts and Ties by name (Belts has test images)."""
    root = make_tiny_dataset(tmp_path_factory.mktemp("names_data"), ["Watches", "Sunglasses", "Tshirts", "Belts"],
                             8, size=64)
    styles = pd.read_csv(root / "styles.csv")
    styles[styles["articleType"] != "Belts"].to_csv(root / "train.csv", index=False)
    catalog = pd.read_csv(SAMPLE / "styles.csv")
    catalog = catalog[catalog["articleType"].isin(["Watches", "Sunglasses", "Tshirts", "Belts", "Ties"])]
    write_categories(catalog.rename(columns={"articleType": "label"}), root / "categories.csv")
    work = tmp_path_factory.mktemp("names_run")
    (work / "names.gin").write_text(NAMES_CONFIG.format(root=root, out=work / "experiments"))
    result = run_tailor("run", "-c", str(work / "names.gin"), "-p", "main.name='names'", cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "known by name only" in result.stdout
    return work / "experiments" / "names"


def test_a_run_carries_name_only_classes_through_evaluation_and_the_report(names_run):
    results = json.loads((names_run / "results.json").read_text())
    assert results["names"]["name_only_classes"] == 2 and results["names"]["categories"].endswith("categories.csv")
    assert results["num_name_only_rows"] == 8 and results["num_unknown_class_rows"] == 0
    assert results["name_only_top5"] == pytest.approx(1.0)  # five classes: every one is in the top five
    rows = {c["class"]: c for c in results["per_class"]}
    assert rows["Belts"]["name_only"] and rows["Belts"]["train_count"] == 0 and not rows["Watches"]["name_only"]
    balance = results["names"]["balance"]
    assert balance["seen_top1"] >= balance["seen_top1_without_names"] - 0.02 - 1e-9
    assert "Belts†" in (names_run / "per_class.md").read_text()
    assert "name-only" in (names_run / "report.html").read_text()

    from tailor.models.registry import load_classifier
    model = load_classifier(names_run / "model.pt")
    assert model.classes == ["Sunglasses", "Tshirts", "Watches", "Belts", "Ties"]
    assert model.name_only_classes == ["Belts", "Ties"] and model.image_classes == ["Sunglasses", "Tshirts", "Watches"]
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 5) and torch.isfinite(out).all()


def test_predict_and_enroll_by_name_then_with_images(names_run, tmp_path):
    import shutil
    run = tmp_path / "run"
    shutil.copytree(names_run, run)
    belt = next(SAMPLE.glob("images/*.jpg"))
    result = run_tailor("predict", str(run), str(belt), "-k", "5")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Belts" in result.stdout and "Ties" in result.stdout  # name-only classes are ranked like any other

    result = run_tailor("enroll", str(run), "--class", "Bow Ties", "--parents", "Accessories > Ties")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "by name" in result.stdout and "'bow ties accessories'" in result.stdout
    result = run_tailor("enroll", str(run), "--class", "Caps", *[str(p) for p in sorted(SAMPLE.glob("images/*.jpg"))[:2]])
    assert result.returncode == 0, result.stderr[-2000:]

    from tailor.inference import Classifier
    classifier = Classifier.load(run)  # a fresh process's view: both enrolments read back
    assert classifier.classes == ["Sunglasses", "Tshirts", "Watches", "Caps", "Belts", "Ties", "Bow Ties"]
    predictions = list(classifier.predict_files([belt], k=7))
    assert sorted(predictions[0].labels) == sorted(classifier.classes)
    assert sum(predictions[0].scores) == pytest.approx(1.0, abs=1e-4)
    classifier.remove("Bow Ties")
    assert classifier.classes[-1] == "Ties"
    with pytest.raises(ValueError, match="already carried by name"):
        classifier.enroll_name("Belts")


def test_a_run_without_names_refuses_enrolling_a_bare_name(probe_run, tmp_path):
    import shutil
    run = tmp_path / "run"
    shutil.copytree(probe_run, run)
    result = run_tailor("enroll", str(run), "--class", "Ties")
    assert result.returncode != 0 and "names.enabled = True" in result.stderr


def test_name_only_classes_survive_onnx_export(names_run, tmp_path):
    from tailor.deploy.exported import OnnxModel
    from tailor.deploy.graph import InferenceGraph, model_kind
    from tailor.models.registry import load_classifier
    model = load_classifier(names_run / "model.pt")
    result = run_tailor("export", str(names_run), str(tmp_path / "names.onnx"))
    assert result.returncode == 0, result.stderr[-2000:]
    exported = OnnxModel(tmp_path / "names.onnx")
    assert list(exported.classes) == model.classes
    images = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        expected = InferenceGraph(model, model_kind(model))(images)
    assert torch.allclose(exported(images), expected, atol=1e-4)


def test_names_in_episodes_add_a_prior_that_fades_with_shots():
    from tailor.data.episodes import EpisodeSampler
    from tailor.evaluation.fewshot import evaluate_episodes, prototype_logits
    from tailor.names.fewshot import NamePrior

    g = torch.Generator().manual_seed(0)
    classes = [f"c{i}" for i in range(6)]
    labels = [c for c in classes for _ in range(20)]
    target = torch.tensor([classes.index(c) for c in labels])
    visual = torch.nn.functional.normalize(torch.randn(len(labels), 8, generator=g) + 0.6 * torch.eye(6, 8)[target], dim=1)
    names = torch.randn(len(labels), 6, generator=g) + 1.5 * torch.eye(6)[target]  # names that point the right way
    rows = torch.cat([visual, names], dim=1)
    sampler = EpisodeSampler(labels, n_way=5, k_shot=1, q_query=5, seed=0)
    without = evaluate_episodes(rows, sampler, 200, NamePrior(classes, 8, 0.0))["accuracy"]
    plain = evaluate_episodes(visual, sampler, 200, prototype_logits)["accuracy"]
    assert without == pytest.approx(plain)  # weight 0 is exactly the CL2N scorer
    assert evaluate_episodes(rows, sampler, 200, NamePrior(classes, 8, 1.0))["accuracy"] > without + 0.1
    support, query = rows[:10].reshape(5, 2, -1), rows[10:13]  # two shots: the prior counts half
    prior = NamePrior(classes, 8, 1.0)(support, query, classes[:5]) - NamePrior(classes, 8, 0.0)(support, query, classes[:5])
    scores = query[:, 8:13]
    expected = 0.5 * (scores - scores.mean(1, keepdim=True)) / scores.std(1, keepdim=True)
    assert torch.allclose(prior, expected, atol=1e-5)
