"""Ensembles of backbones: the averaging maths on hand-built members, the model file, and the transfer pipeline
(train, evaluate, fine-tune on new classes, predict, enroll) run on an ensemble as a user runs it."""

import json

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from conftest import evaluate_saved_model, run_tailor
from tailor.evaluation.scores import probabilities
from tailor.models.ensemble import EnsembleError, EnsembleNet
from tailor.models.files import ModelFileError, load_model_file, save_model_file
from tailor.models.heads import TransferNet
from tailor.models.registry import load_classifier
from tailor.tasks.probe import fit_linear_head, fit_linear_heads

CLASSES = ["a", "b", "c"]


def member(size: int, seed: int, classes=CLASSES) -> TransferNet:
    torch.manual_seed(seed)
    net = TransferNet(classes, pretrained=False, image_size=size, dropout=0.0)
    torch.nn.init.normal_(net.head[-1].weight, std=0.5)  # heads that disagree, so the mean is not trivial
    return net.eval()


@pytest.fixture(scope="module")
def ensemble() -> EnsembleNet:
    return EnsembleNet([member(32, 0), member(48, 1)]).eval()


def test_output_is_the_mean_of_member_probabilities_each_at_its_own_size(ensemble):
    small, large = ensemble.members
    assert ensemble.image_size == 32 and ensemble.data_config is small.data_config
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        resized = F.interpolate(x, size=(48, 48), mode="bilinear", antialias=True, align_corners=False)
        expected = 0.5 * (small(x).softmax(1) + large(resized).softmax(1))
        got = probabilities(ensemble, x, tta=False)
        assert torch.allclose(got, expected, atol=1e-6)
        assert torch.allclose(got.sum(1), torch.ones(4))
        # the mirror-image average works on the ensemble's output like on any classifier's
        mirrored = 0.5 * (small(x.flip(-1)).softmax(1) + large(resized.flip(-1)).softmax(1))
        assert torch.allclose(probabilities(ensemble, x, tta=True), 0.5 * (expected + mirrored), atol=1e-6)


def test_a_member_normalised_otherwise_sees_the_image_its_own_way():
    lite, imagenet = member(32, 0), member(32, 1)
    imagenet.data_config = {**imagenet.data_config, "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
    ensemble = EnsembleNet([lite, imagenet]).eval()
    pixels = torch.rand(2, 3, 32, 32)  # the image in [0, 1]; the pipeline normalises it for the first member
    x = (pixels - 0.5) / 0.5
    own = (pixels - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = 0.5 * (lite(x).softmax(1) + imagenet(own).softmax(1))
        assert torch.allclose(probabilities(ensemble, x, tta=False), expected, atol=1e-5)


def test_features_sit_side_by_side_and_each_head_reads_its_slice(ensemble):
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        features = ensemble.feature_extractor()(x)
        widths = [h.in_features for h in ensemble.linear_heads()]
        assert features.shape == (2, sum(widths))
        small, large = ensemble.members
        assert torch.allclose(features[:, :widths[0]], small.features(x))

    targets = torch.tensor([0, 1, 2] * 4)
    stacked = torch.randn(2, 12, 6)
    heads = fit_linear_heads(stacked, targets, 3, [4, 2], weight_decay=1e-2)
    alone = fit_linear_head(stacked[..., 4:], targets, 3, weight_decay=1e-2)
    assert [w.shape for w, _ in heads] == [(3, 4), (3, 2)]
    assert torch.allclose(heads[1][0], alone[0]) and torch.allclose(heads[1][1], alone[1])
    with pytest.raises(ValueError, match="do not split"):
        fit_linear_heads(stacked, targets, 3, [4, 3])


def test_model_file_round_trip_is_weights_only_and_exact(ensemble, tmp_path):
    save_model_file(tmp_path / "model.pt", ensemble.export({"a": 2, "b": 3, "c": 1}))
    saved = torch.load(tmp_path / "model.pt", weights_only=True)
    assert saved["backbone"] == ["efficientnet_lite0", "efficientnet_lite0"] and len(saved["members"]) == 2
    loaded = load_classifier(tmp_path / "model.pt")
    assert isinstance(loaded, EnsembleNet) and loaded.classes == CLASSES and loaded.train_counts["b"] == 3
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), ensemble(x))

    # a one-backbone model refuses the file, saying what it is
    with pytest.raises(ModelFileError, match="ensemble of 2 backbones"):
        TransferNet(CLASSES, pretrained=False, saved_model_path=str(tmp_path / "model.pt"))


def test_members_that_cannot_vote_together_are_refused():
    with pytest.raises(EnsembleError, match="at least two"):
        EnsembleNet([member(32, 0)])
    with pytest.raises(EnsembleError, match="same classes"):
        EnsembleNet([member(32, 0), member(32, 1, classes=["a", "b", "d"])])
    with pytest.raises(TypeError, match="several backbones make an ensemble"):
        TransferNet(CLASSES, backbone=["efficientnet_lite0", "efficientnet_lite1"], pretrained=False)


ENSEMBLE_CONFIG = """
main.method = 'transfer'
main.num_epochs = 0
main.seed = 3
main.output_dir = '{out}'
FashionDataset.root_dir = '{root}'
FashionDataset.csv_file = '{root}/styles.csv'
evaluate/FashionDataset.csv_file = '{root}/styles.csv'
TransferNet.backbone = ['efficientnet_lite0', 'efficientnet_lite1']
transfer.calibrate_few_shot = False
"""


@pytest.fixture(scope="module")
def ensemble_run(tiny_dataset, tmp_path_factory):
    """Two real pretrained backbones at their native sizes (224 and 240 px), linear probes, on 36 images."""
    work = tmp_path_factory.mktemp("ensemble")
    (work / "ens.gin").write_text(ENSEMBLE_CONFIG.format(root=tiny_dataset, out=work))
    result = run_tailor("run", "-c", str(work / "ens.gin"), "-p", "main.name='ens'", cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]
    return work, work / "ens"


def test_an_ensemble_trains_evaluates_and_scores_like_its_members(ensemble_run):
    work, run_dir = ensemble_run
    results = json.loads((run_dir / "results.json").read_text())
    assert results["num_test"] == 36 and results["top1"] >= 0.9  # its own training images, three easy classes
    model = load_classifier(run_dir / "model.pt")
    assert isinstance(model, EnsembleNet) and model.image_size == 224
    assert [m.image_size for m in model.members] == [224, 240]
    stored = load_model_file(run_dir / "probe_features.pt")
    assert stored["features"].shape == (2, 36, 1280 + 1280)  # both members' features, image and mirror

    evaluated = evaluate_saved_model(run_dir / "model.pt", results["data_root"], results["test_csv"], work, "again")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    again = json.loads((work / "again" / "results.json").read_text())
    assert again["top1"] == results["top1"] and again["per_class"] == results["per_class"]


def test_an_ensemble_gets_new_heads_for_new_classes_and_refuses_fine_tuning(ensemble_run, tiny_dataset):
    work, run_dir = ensemble_run
    frame = pd.read_csv(tiny_dataset / "styles.csv")
    frame[frame["articleType"] != "Tshirts"].to_csv(work / "two.csv", index=False)
    args = ["run", "-c", str(work / "ens.gin"), "-p", f"TransferNet.saved_model_path='{run_dir / 'model.pt'}'",
            "-p", f"FashionDataset.csv_file='{work}/two.csv'"]
    tuned = run_tailor(*args, "-p", "main.name='two'", cwd=work)
    assert tuned.returncode == 0, tuned.stderr[-3000:]
    model = load_classifier(work / "two" / "model.pt")
    assert isinstance(model, EnsembleNet) and model.classes == ["Sunglasses", "Watches"]
    original = load_classifier(run_dir / "model.pt")
    for new, old in zip(model.members, original.members):  # the saved backbones, not fresh ImageNet ones
        assert torch.equal(new.backbone.conv_stem.weight, old.backbone.conv_stem.weight)

    refused = run_tailor(*args, "-p", "main.name='ft'", "-p", "main.num_epochs=1", cwd=work)
    assert refused.returncode == 2 and "linear probes only" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_predict_and_enroll_on_an_ensemble(ensemble_run, tmp_path):
    import shutil

    from PIL import Image

    from conftest import SAMPLE

    _, trained = ensemble_run
    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    styles = pd.read_csv(SAMPLE / "styles.csv")
    shoes = styles[styles["articleType"] == "Sports Shoes"].sort_values("id")["id"].head(8).tolist()
    for pid in shoes:
        Image.open(SAMPLE / "images" / f"{pid}.jpg").convert("RGB").resize((48, 48)).save(tmp_path / f"{pid}.jpg")
    enrolled = run_tailor("enroll", str(run_dir), "--class", "Sports Shoes", *[str(tmp_path / f"{p}.jpg") for p in shoes[:4]])
    assert enrolled.returncode == 0, enrolled.stderr[-2000:]
    saved = load_model_file(run_dir / "enrolled.pt")
    assert [h["weight"].shape for h in saved["heads"]] == [(4, 1280), (4, 1280)]  # one refitted head per member

    out = tmp_path / "p.csv"
    predicted = run_tailor("predict", str(run_dir), *[str(tmp_path / f"{p}.jpg") for p in shoes[4:]], "--csv", str(out))
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    table = pd.read_csv(out)
    assert table["class1"].tolist().count("Sports Shoes") >= 3
    assert ((table["score1"] + table["score2"] + table["score3"] + table["score4"]) > 0.99).all()
