"""The one way in to a saved model: every model file says its kind in ``format``; this reads a file once,
tells the kind, and builds the right network with its weights (no network access, no pretrained download).

Kinds: ``classifier`` (one backbone and a head), ``ensemble`` (several, averaged), ``attributes`` (one
backbone, a head per attribute) and ``embedding`` (a metric-learning run). This module sits above the model
modules, which never import it, so none of them imports another in a circle.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from tailor.models.embedding import EMBEDDING_FORMAT, load_embedding_net
from tailor.models.ensemble import EnsembleNet, load_ensemble
from tailor.models.files import ModelFileError, is_ensemble_file, is_multitask_file, load_model_file
from tailor.models.heads import TransferNet, load_transfer_net
from tailor.models.multitask import load_multitask

KINDS = ("classifier", "ensemble", "attributes", "embedding")


def model_kind(saved: dict) -> str:
    """The kind of model a loaded model file holds (one of :data:`KINDS`)."""
    if is_ensemble_file(saved):
        return "ensemble"
    if is_multitask_file(saved):
        return "attributes"
    if saved.get("format") == EMBEDDING_FORMAT:
        return "embedding"
    return "classifier"


def load_model(path: str | Path, saved: dict | None = None) -> nn.Module:
    """Any tailor model file, rebuilt in eval mode. ``saved``: its contents, when the caller read them."""
    saved = load_model_file(path) if saved is None else saved
    kind = model_kind(saved)
    if kind == "attributes":
        return load_multitask(path, saved)
    if kind == "embedding":
        return load_embedding_net(path, saved)
    return load_classifier(path, saved)


def load_classifier(path: str | Path, saved: dict | None = None) -> TransferNet | EnsembleNet:
    """A trained single-backbone classifier or ensemble from its model file; any other kind is refused with
    a line that says what the file holds."""
    saved = load_model_file(path) if saved is None else saved
    kind = model_kind(saved)
    if kind == "attributes":
        raise ModelFileError(f"{path}: a multi-attribute model (one head per attribute), not a single classifier")
    if kind == "embedding":
        raise ModelFileError(f"{path}: a metric-learning embedding model, not a classifier")
    if kind == "ensemble":
        return load_ensemble(saved, str(path))
    return load_transfer_net(saved, path)

