"""The one way in to a saved model: every model file says its kind; this reads a file once, tells the kind from
the table of kinds (:mod:`tailor.models.kinds`, filled here) and builds the network with its weights (no
network access, no pretrained download).

Kinds: ``ensemble`` (several backbones, averaged), ``attributes`` (one backbone, a head per attribute),
``embedding`` (a metric-learning run) and ``classifier`` (one backbone and a head: what any other file is).
This module sits above the model modules, which never import it, so none of them imports another in a circle.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from tailor.models.embedding import EMBEDDING_FORMAT, EmbeddingNet, load_embedding_net
from tailor.models.ensemble import EnsembleNet, load_ensemble
from tailor.models.files import ModelFileError, is_ensemble_file, is_multitask_file, load_model_file
from tailor.models.heads import TransferNet, load_transfer_net
from tailor.models.kinds import KINDS, ModelKind, kind_of_file, register_kind
from tailor.models.multitask import MultiTaskNet, load_multitask

register_kind(ModelKind("ensemble", "classifier", EnsembleNet, is_ensemble_file,
                        lambda path, saved: load_ensemble(saved, str(path))))
register_kind(ModelKind("attributes", "attributes", MultiTaskNet, is_multitask_file, load_multitask))
register_kind(ModelKind("embedding", "embedding", EmbeddingNet,
                        lambda saved: saved.get("format") == EMBEDDING_FORMAT, load_embedding_net))
register_kind(ModelKind("classifier", "classifier", TransferNet, lambda saved: True,
                        lambda path, saved: load_transfer_net(saved, path)))

#: every kind's name, in the table's order
KIND_NAMES = tuple(KINDS)


def model_kind(saved: dict) -> str:
    """The kind of model a loaded model file holds (a name of :data:`KIND_NAMES`)."""
    return kind_of_file(saved).name


def model_output(saved: dict) -> str:
    """What the model in a loaded file outputs: 'classifier', 'attributes' or 'embedding'."""
    return kind_of_file(saved).output


def load_model(path: str | Path, saved: dict | None = None) -> nn.Module:
    """Any tailor model file, rebuilt in eval mode. ``saved``: its contents, when the caller read them."""
    saved = load_model_file(path) if saved is None else saved
    return kind_of_file(saved).load(path, saved)


def load_classifier(path: str | Path, saved: dict | None = None) -> TransferNet | EnsembleNet:
    """A trained single-backbone classifier or ensemble from its model file; any other kind is refused with
    a line that says what the file holds."""
    saved = load_model_file(path) if saved is None else saved
    kind = kind_of_file(saved)
    if kind.output == "attributes":
        raise ModelFileError(f"{path}: a multi-attribute model (one head per attribute), not a single classifier")
    if kind.output == "embedding":
        raise ModelFileError(f"{path}: a metric-learning embedding model, not a classifier")
    return kind.load(path, saved)
