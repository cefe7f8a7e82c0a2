"""Many attributes at once: targets with missing values, the masked loss, per-head metrics, and the
multi-attribute run as a user drives it (train, report, predict) on tiny real images."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from conftest import run_tailor
from tailor.data.attributes import MISSING, AttributeDataset, attribute_targets, class_counts, head_classes
from tailor.data.catalog import CatalogError
from tailor.data.datasets import UNKNOWN
from tailor.models.heads import TransferNet
from tailor.models.multitask import MultiTaskNet, load_multitask
from tailor.tasks.multitask import MultiTaskTask, masked_cross_entropy

FRAME = pd.DataFrame({
    "image": [f"images/{i}.jpg" for i in range(6)],
    "label": ["Tshirts", "Tshirts", "Watches", "Watches", "Shirts", "Shirts"],
    "baseColour": ["Red", "", "Black", "NA", "Red", "Blue"],
    "gender": ["Men", "Women", "Men", "Men", "Women", "Unisex"],
})


def test_targets_mask_missing_values_and_mark_unknown_ones():
    heads = head_classes(FRAME.iloc[:5], ["baseColour", "gender"])
    assert heads == {"baseColour": ["Black", "Red"], "gender": ["Men", "Women"]}  # "" and "NA" are no colour
    targets = attribute_targets(FRAME, heads)
    assert targets[:, 0].tolist() == [1, MISSING, 0, MISSING, 1, UNKNOWN]  # "Blue" was never trained on
    assert targets[:, 1].tolist() == [0, 1, 0, 0, 1, UNKNOWN]
    counts = class_counts(targets, heads)
    assert counts["baseColour"].tolist() == [1, 2] and counts["gender"].tolist() == [3, 2]


def test_head_classes_refuse_unknown_columns_and_single_value_attributes():
    with pytest.raises(CatalogError, match="no column 'colour'.*baseColour"):
        head_classes(FRAME, ["colour"])
    with pytest.raises(CatalogError, match="1 value"):
        head_classes(FRAME.iloc[2:4], ["gender"])
    with pytest.raises(CatalogError, match="twice"):
        head_classes(FRAME, ["gender", "gender"])
    assert head_classes(FRAME, ["gender"], min_count=2) == {"gender": ["Men", "Women"]}


def test_masked_cross_entropy_ignores_rows_without_a_target():
    logits = torch.randn(5, 3, requires_grad=True)
    targets = torch.tensor([2, -1, 0, -2, 1])
    loss = masked_cross_entropy(logits, targets)
    known = torch.tensor([0, 2, 4])
    assert torch.allclose(loss, F.cross_entropy(logits[known], targets[known]))
    loss.backward()
    assert logits.grad[[1, 3]].abs().sum() == 0 and logits.grad[known].abs().sum() > 0
    assert masked_cross_entropy(logits, torch.full((5,), -1)) is None


@pytest.fixture(scope="module")
def tiny_net() -> MultiTaskNet:
    torch.manual_seed(0)
    return MultiTaskNet({"articleType": ["A", "B", "C"], "gender": ["Men", "Women"]}, pretrained=False,
                        image_size=32)


def test_training_loss_is_the_weighted_sum_of_the_heads_masked_losses(tiny_net):
    task = MultiTaskTask(tiny_net, loss_weights={"gender": 0.25}, label_smoothing=0.0, channels_last=False)
    task.log = lambda *args, **kwargs: None
    tiny_net.eval()  # no dropout: the two computations below see the same logits
    images = torch.randn(4, 3, 32, 32)
    targets = torch.tensor([[0, -1], [1, 1], [2, -1], [-1, 0]])
    loss = task.training_step((images, targets), 0)
    outputs = tiny_net(images)
    expected = (F.cross_entropy(outputs["articleType"][:3], targets[:3, 0])
                + 0.25 * F.cross_entropy(outputs["gender"][[1, 3]], targets[[1, 3], 1]))
    assert torch.allclose(loss, expected, atol=1e-5)
    # A head with no target in the batch adds nothing (and no NaN).
    only_type = task.training_step((images, torch.tensor([[0, -1], [1, -1], [2, -1], [0, -1]])), 0)
    assert torch.isfinite(only_type)
    with pytest.raises(ValueError, match="colour"):
        MultiTaskTask(tiny_net, loss_weights={"colour": 1.0})


def test_one_forward_pass_gives_every_head(tiny_net):
    calls = []
    handle = tiny_net.backbone.register_forward_hook(lambda *args: calls.append(1))
    out = tiny_net(torch.randn(2, 3, 32, 32))
    handle.remove()
    assert len(calls) == 1 and set(out) == {"articleType", "gender"}
    assert out["articleType"].shape == (2, 3) and out["gender"].shape == (2, 2)


def test_a_classifier_file_seeds_the_matching_head(tmp_path, tiny_net):
    transfer = TransferNet(["A", "B", "C"], pretrained=False, image_size=32)
    torch.save(transfer.export(), tmp_path / "model.pt")
    net = MultiTaskNet({"articleType": ["A", "B", "C"], "gender": ["Men", "Women"]}, image_size=32,
                       saved_model_path=str(tmp_path / "model.pt"))
    assert torch.equal(net.linear("articleType").weight, transfer.head[-1].weight)
    assert torch.equal(net.backbone.conv_head.weight, transfer.backbone.conv_head.weight)
    x = torch.randn(1, 3, 32, 32)
    assert torch.allclose(net.eval()(x)["articleType"], transfer.eval()(x), atol=1e-5)


def test_attribute_dataset_yields_masked_target_vectors(tiny_dataset):
    from tailor.data.datasets import FashionDataset

    images = FashionDataset(tiny_dataset, tiny_dataset / "styles.csv").load(progress=False)
    targets = np.full((len(images), 2), MISSING)
    targets[:, 0] = 1
    image, target = AttributeDataset(images, targets)[0]
    assert target.tolist() == [1, -1] and image.dtype == torch.uint8


#: two colour-probe candidates that cross-validate apart on this table (the default grid's nine cost 4.5 times
#: the time and choose the same (0.0, 0.01))
ATTRIBUTES_CONFIG = """
include '{repo}/configs/attributes.gin'
main.num_epochs = 1
main.output_dir = '{out}'
FashionDataset.root_dir = '{root}'
FashionDataset.csv_file = '{root}/train.csv'
evaluate/FashionDataset.csv_file = '{root}/test.csv'
MultiTaskNet.image_size = 32
attributes.batch_size = 6
attributes.val_fraction = 0.2
attributes.columns = ['articleType', 'baseColour', 'gender']
make_trainer.progress = False
attributes.colour_powers = [0.0]
attributes.colour_weight_decays = [0.1, 0.01]
"""


@pytest.fixture(scope="module")
def attribute_run(tiny_dataset, tmp_path_factory):
    """A tiny multi-attribute run whose training table lacks some colours and whose test table has a colour
    the model never saw and a product with no colour."""
    work = tmp_path_factory.mktemp("attributes")
    styles = pd.read_csv(tiny_dataset / "styles.csv", dtype=str, keep_default_na=False)
    train = styles.copy()
    train.loc[train.index[:4], "baseColour"] = ""
    train.to_csv(tiny_dataset / "train.csv", index=False)
    test = styles.copy()
    test.loc[test.index[0], "baseColour"] = "Ultraviolet"
    test.loc[test.index[1], "baseColour"] = ""
    test.to_csv(tiny_dataset / "test.csv", index=False)
    config = work / "attributes.gin"
    config.write_text(ATTRIBUTES_CONFIG.format(repo=Path(__file__).parent.parent, root=tiny_dataset,
                                               out=work / "experiments"))
    result = run_tailor("run", "-c", str(config), "-p", "main.name='attrs'", cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]
    return work / "experiments" / "attrs", result, styles


def test_attribute_run_scores_every_head(attribute_run):
    run_dir, result, styles = attribute_run
    results = json.loads((run_dir / "results.json").read_text())
    heads = results["attribute_results"]
    assert list(heads) == ["articleType", "baseColour", "gender"]
    colour = heads["baseColour"]
    assert colour["num_test"] == len(styles) - 1 and colour["num_missing"] == 1  # the row with no colour
    assert colour["num_unseen_class_rows"] == 1  # "Ultraviolet" counts as an error
    per_class = {c["class"]: c for c in colour["per_class"]}
    assert not per_class["Ultraviolet"]["seen"] and per_class["Ultraviolet"]["top1"] == 0.0
    supports = sum(c["support"] for c in colour["per_class"])
    assert supports == colour["num_test"]
    # Top-5 only where an attribute has more than five classes.
    assert heads["articleType"]["top5"] is None and heads["gender"]["top5"] is None
    assert colour["classes"] > 5 and colour["top1"] <= colour["top5"] <= 1.0
    assert results["mean_top1"] == pytest.approx(np.mean([h["top1"] for h in heads.values()]))
    for attribute in heads:
        for name in ("per_class.md", "per_class.csv", "confusion.png", "mistakes.csv"):
            assert (run_dir / "heads" / attribute / name).is_file(), (attribute, name)
    assert "| baseColour |" in result.stdout and "mean top-1" in result.stdout
    colour_probe = results["probes"]["baseColour"]  # chosen by 3-fold cross-validation on the training rows
    assert set(colour_probe["cv_top1"]) == {"0.0/0.1", "0.0/0.01"}
    assert colour_probe["cv_top1"][f"0.0/{colour_probe['weight_decay']}"] == max(colour_probe["cv_top1"].values())
    page = (run_dir / "report.html").read_text()
    assert "<h2>Attributes</h2>" in page and page.count("<details>") == 3
    assert 'id="per-class"' not in page and 'id="confusion"' not in page  # shown per attribute instead


def test_attribute_model_file_round_trips(attribute_run):
    run_dir, _, _ = attribute_run
    model = load_multitask(run_dir / "model.pt")
    assert model.attributes == ["articleType", "baseColour", "gender"]
    counts = model.train_counts["baseColour"]
    assert sum(counts.values()) < sum(model.train_counts["gender"].values())  # 4 training rows had no colour
    with pytest.raises(Exception, match="multi-attribute"):
        from tailor.models.registry import load_classifier
        load_classifier(run_dir / "model.pt")


def test_predict_prints_every_attribute(attribute_run, tiny_dataset):
    run_dir, _, styles = attribute_run
    image = tiny_dataset / "images" / f"{styles['id'].iloc[0]}.jpg"
    result = run_tailor("predict", str(run_dir), str(image), "-k", "2")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].endswith(image.name)
    assert [line.split()[0] for line in lines[1:]] == ["articleType", "baseColour", "gender"]
    csv_path = run_dir.parent / "predictions.csv"
    result = run_tailor("predict", str(run_dir), str(tiny_dataset / "images"), "--csv", str(csv_path), "-k", "2")
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(csv_path)
    assert len(table) == len(styles)
    assert {"articleType1", "articleType_score1", "baseColour2", "gender_score2"} <= set(table.columns)
    assert table["gender1"].isin(["Men", "Women", "Unisex", "Boys", "Girls"]).all()
    enroll = run_tailor("enroll", str(run_dir), "--class", "Capes", str(image))
    assert enroll.returncode == 2 and "multi-attribute" in enroll.stderr


def test_a_saved_attribute_model_is_evaluated_without_training(attribute_run):
    run_dir, _, _ = attribute_run
    trained = json.loads((run_dir / "results.json").read_text())["attribute_results"]
    config = run_dir.parent.parent / "attributes.gin"
    result = run_tailor("run", "-c", str(config), "-p", "main.name='attrs_eval'", "-p", "main.mode='evaluate'",
                        "-p", f"MultiTaskNet.saved_model_path='{run_dir / 'model.pt'}'", cwd=run_dir.parent.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    evaluated = json.loads((run_dir.parent / "attrs_eval" / "results.json").read_text())["attribute_results"]
    assert {a: r["top1"] for a, r in evaluated.items()} == {a: r["top1"] for a, r in trained.items()}
    assert not (run_dir.parent / "attrs_eval" / "checkpoints").exists()


def test_serve_answers_every_attribute_and_refuses_enrolment(attribute_run, tiny_dataset):
    from fastapi.testclient import TestClient

    from tailor.inference import load_predictor
    from tailor.serve.app import create_app
    from tailor.serve.service import ServedRun

    run_dir, _, styles = attribute_run
    image = tiny_dataset / "images" / f"{styles['id'].iloc[0]}.jpg"
    with TestClient(create_app(ServedRun.load(run_dir))) as client:
        assert client.get("/health").json()["model"] == "attributes"
        answer = client.post("/predict?k=2", files=[("images", (image.name, image.read_bytes(), "image/jpeg"))])
        assert answer.status_code == 200, answer.text
        served = answer.json()["predictions"][0]["attributes"]
        classes = client.get("/classes").json()["attributes"]
        refused = client.post("/enroll", data={"name": "Capes"},
                              files=[("images", (image.name, image.read_bytes(), "image/jpeg"))])
    cli = next(load_predictor(run_dir).predict_files([image], k=2))
    assert list(served) == list(cli.attributes) == ["articleType", "baseColour", "gender"]
    for attribute, prediction in cli.attributes.items():
        assert [t["label"] for t in served[attribute]] == prediction.labels
        assert set(prediction.labels) <= set(classes[attribute])
    assert refused.status_code == 404 and "cannot enroll" in refused.json()["error"]
