"""Backbones: the offline ImageNet weights are real, other timm weights load from a cache or fail clearly."""

import pandas as pd
import pytest
import timm
import torch

from tailor.data.images import decode_image
from tailor.data.transforms import DataConfig, eval_transform
from tailor.models.backbones import BackboneError, backbone_data_config, create_backbone

# Sample categories and the ImageNet classes that name them.
IMAGENET = {
    "Sunglasses": {836, 837}, "Backpacks": {414}, "Jeans": {608},
    "Wallets": {893}, "Sports Shoes": {770}, "Ties": {906, 457},
}


def test_offline_lite0_weights_recognise_real_products(sample_root):
    model = create_backbone("efficientnet_lite0", keep_classifier=True).eval()
    config = backbone_data_config(model)
    assert config["mean"] == (0.5, 0.5, 0.5) and config["input_size"] == (3, 224, 224)
    transform = eval_transform(DataConfig.from_timm(config))
    styles = pd.read_csv(sample_root / "styles.csv")
    hits = 0
    for category, classes in IMAGENET.items():
        ids = styles[styles["articleType"] == category].sort_values("id")["id"].head(10)
        batch = torch.stack([transform(decode_image(sample_root / "images" / f"{i}.jpg")) for i in ids])
        with torch.inference_mode():
            predicted = model(batch).argmax(1).tolist()
        hits += sum(p in classes for p in predicted)
    assert hits >= 45, f"only {hits} of 60 products recognised: the weights are not the pretrained ones"


def test_random_init_does_not_recognise_them(sample_root):
    """The check above must be able to fail: random weights never reach it."""
    model = create_backbone("efficientnet_lite0", pretrained=False, keep_classifier=True).eval()
    transform = eval_transform(DataConfig.from_timm(backbone_data_config(model)))
    styles = pd.read_csv(sample_root / "styles.csv")
    ids = styles[styles["articleType"] == "Sunglasses"]["id"].head(10)
    batch = torch.stack([transform(decode_image(sample_root / "images" / f"{i}.jpg")) for i in ids])
    with torch.inference_mode():
        assert sum(p in {836, 837} for p in model(batch).argmax(1).tolist()) < 5


def test_feature_backbone_reports_its_width():
    model = create_backbone("efficientnet_lite0", pretrained=False)
    assert model.num_features == 1280
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 1280)


def test_unknown_backbone_is_one_clear_error():
    with pytest.raises(BackboneError, match="unknown backbone 'no_such_net'"):
        create_backbone("no_such_net")


def test_unreachable_timm_weights_say_how_to_get_them(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(BackboneError, match="cannot load pretrained weights for 'resnet18.tv_in1k'.*copy"):
        create_backbone("resnet18.tv_in1k")


def test_cached_timm_weights_load_without_network(monkeypatch, tmp_path):
    """Weights in the torch hub cache are used as they are (here: a saved random resnet18)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    reference = timm.create_model("resnet18.tv_in1k", pretrained=False)
    url = timm.models.get_pretrained_cfg("resnet18.tv_in1k").url
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(reference.state_dict(), tmp_path / "hub" / "checkpoints" / url.rsplit("/", 1)[-1])
    model = create_backbone("resnet18.tv_in1k")
    assert torch.equal(model.conv1.weight, reference.conv1.weight)
