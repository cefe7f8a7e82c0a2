"""Each recipe's settings as a typed, documented dataclass: what :func:`tailor.fit` takes as keyword arguments.

A setting is one field: its default is the value the shipped config (``configs/<recipe>.gin``) binds, and its
metadata names that binding (``TransferNet.backbone``, ``main.num_epochs``…), so the Python API and
``tailor run -c configs/<recipe>.gin -p …`` describe a run with the same words and give the same run.
``tests/test_api.py`` holds every default against its config file: a default changed in one place only fails
there.

Settings are resolved once, at the edge: :meth:`RecipeSettings.bindings` turns them into the bindings the
recipe is configured with, after its config file.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from tailor.paths import CONFIGS


def setting(binding: str, default: Any, doc: str) -> Any:
    """A field bound as ``binding`` in gin terms, with its default and what it does."""
    return field(default=default, metadata={"gin": binding, "doc": doc})


def gin_literal(value: Any) -> str:
    """``value`` written as gin reads it back (Python's literals; a sequence as a list)."""
    if isinstance(value, Path):
        return repr(str(value))
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(gin_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{gin_literal(k)}: {gin_literal(v)}" for k, v in value.items()) + "}"
    if value is None or isinstance(value, (bool, int, float, str)):
        return repr(value)
    raise TypeError(f"a setting must be a number, text, a list or None, not {type(value).__name__}")


@dataclass(frozen=True)
class RecipeSettings:
    """What every recipe's settings share: the config file they start from and how they become bindings."""

    #: the recipe's name in :func:`tailor.fit`
    recipe: ClassVar[str]
    #: the shipped config file whose bindings are the defaults
    config: ClassVar[str]
    #: whether the recipe needs a test catalog (few-shot: the novel classes it is scored on)
    needs_test: ClassVar[bool] = False
    #: the recipe function's own binding scope (``transfer``, ``metric``…), for its ``progress`` flag
    scope: ClassVar[str]

    @property
    def config_file(self) -> Path:
        return CONFIGS / self.config

    def bindings(self) -> list[str]:
        """Every setting as a gin binding, in field order."""
        return [f"{f.metadata['gin']} = {gin_literal(getattr(self, f.name))}" for f in fields(self)
                if f.metadata.get("gin")]

    @classmethod
    def describe(cls) -> list[dict]:
        """Each setting's name, binding, default and meaning (for documentation and ``help``)."""
        return [{"name": f.name, "binding": f.metadata["gin"], "default": f.default, "doc": f.metadata["doc"]}
                for f in fields(cls) if f.metadata.get("gin")]

    def replace(self, **changes: Any) -> "RecipeSettings":
        """A copy with ``changes`` (unknown names are an error that lists the known ones)."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise TypeError(f"{type(self).__name__} has no setting {', '.join(map(repr, unknown))}; "
                            f"its settings: {', '.join(sorted(known))}")
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class TransferSettings(RecipeSettings):
    """ImageNet transfer to a catalog's categories (``configs/transfer.gin``): each backbone's new head fitted
    as a class-balanced logistic regression on frozen features (the linear probe); with ``epochs`` > 0 the
    whole network is then fine-tuned (one backbone)."""

    recipe: ClassVar[str] = "transfer"
    config: ClassVar[str] = "transfer.gin"
    scope: ClassVar[str] = "transfer"

    backbone: str | tuple[str, ...] = setting(
        "TransferNet.backbone", ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"),
        "one timm name, or a list: an ensemble that averages its members' probabilities")
    epochs: int = setting("main.num_epochs", 0, "fine-tuning epochs after the probe (0: the probe is the model)")
    image_size: int | None = setting("TransferNet.image_size", None, "input size (None: the backbone's own)")
    dropout: float = setting("TransferNet.dropout", 0.2, "dropout before the head while fine-tuning")
    linear_probe: bool = setting("transfer.linear_probe", True, "fit the head on frozen features first (LP-FT)")
    probe_power: float = setting("transfer.probe_power", 1.0,
                                 "class balance of the probe's loss (1: every class weighs the same, 0: natural)")
    probe_weight_decay: float = setting("transfer.probe_weight_decay", 3e-5, "L2 penalty of the probe")
    calibrate_few_shot: bool = setting("transfer.calibrate_few_shot", True,
                                       "classes with few images borrow the spread of similar classes")
    batch_size: int = setting("transfer.batch_size", 32, "fine-tuning batch size")
    val_fraction: float = setting("transfer.val_fraction", 0.1,
                                  "training images held out to pick the fine-tuning checkpoint")
    sampler_power: float = setting("transfer.sampler_power", 0.0, "class balance of fine-tuning batches")
    lr: float = setting("torch.optim.AdamW.lr", 1e-4, "fine-tuning learning rate")
    weight_decay: float = setting("torch.optim.AdamW.weight_decay", 0.05, "fine-tuning weight decay")
    label_smoothing: float = setting("ClassificationTask.label_smoothing", 0.1, "fine-tuning label smoothing")
    augment: str = setting("train_transform.augment", "trivial", "fine-tuning augmentation: trivial, none, …")
    tta: bool = setting("evaluate.tta", True, "score each test image averaged with its mirror image")
    names: bool = setting("names.enabled", False,
                          "also carry the catalog's categories that have no training image, by name")


@dataclass(frozen=True)
class FinetuneSettings(TransferSettings):
    """The seed's second experiment (``configs/finetune.gin``): a trained model (``start_from``: a run folder or
    its ``model.pt``) tailored to the rare categories, its backbones kept."""

    recipe: ClassVar[str] = "finetune"
    config: ClassVar[str] = "finetune.gin"

    start_from: str | None = setting("TransferNet.saved_model_path", "experiments/transfer/model.pt",
                                     "the model to start from: a run folder or its model.pt")
    calibrate_few_shot: bool = setting("transfer.calibrate_few_shot", False,
                                       "classes with few images borrow the spread of similar classes")
    names: bool = setting("names.enabled", True,
                          "also carry the catalog's categories that have no training image, by name")


@dataclass(frozen=True)
class TripletSettings(RecipeSettings):
    """Metric learning (``configs/triplet.gin``): an embedding in which products of one category lie close, a kNN
    classifier on it, a t-SNE map, and the look-alike index :meth:`tailor.Model.similar` searches."""

    recipe: ClassVar[str] = "triplet"
    config: ClassVar[str] = "triplet.gin"
    scope: ClassVar[str] = "metric"

    backbone: str = setting("metric.backbone", "efficientnet_lite0", "the pretrained backbone")
    epochs: int = setting("main.num_epochs", 30, "training epochs")
    train_backbone: bool = setting("metric.train_backbone", False,
                                   "fine-tune the whole network (else a projection of cached features)")
    image_size: int | None = setting("metric.image_size", None, "input size (None: the backbone's own)")
    min_examples: int = setting("metric.min_examples", 4, "classes with fewer training images sit out of training")
    batch_size: int = setting("metric.batch_size", 128, "batch size")
    m_per_class: int = setting("metric.m_per_class", 4, "images per class in a batch")
    val_fraction: float = setting("metric.val_fraction", 0.1, "training images held out to pick the checkpoint")
    projection_start: str = setting("metric.projection_start", "whitened", "'whitened' or 'random'")
    dim: int = setting("Projection.dim", 256, "embedding dimensions")
    loss: str = setting("MetricTask.loss", "triplet", "the metric loss")
    miner: str = setting("MetricTask.miner", "hard", "random, semihard, hard, all or none")
    margin: float = setting("MetricTask.margin", 0.2, "the triplet margin")
    lr: float = setting("MetricTask.lr", 1e-3, "learning rate")
    weight_decay: float = setting("MetricTask.weight_decay", 1e-4, "weight decay")
    k: int = setting("metric.k", 5, "neighbours that vote in kNN classification")
    weighting: str = setting("metric.weighting", "softmax", "kNN vote weights: uniform, distance or softmax")
    temperature: float = setting("metric.temperature", 0.1, "softmax temperature of the kNN vote")
    tsne: bool = setting("metric.tsne", True, "draw the t-SNE map of the test embeddings (tsne.png, tsne.html)")
    colour_powers: tuple[float, ...] = setting(
        "metric.colour_powers", (0.0, 0.5, 1.0),
        "class priors tried for the colour probe (0: every image weighs the same, 1: every class does)")
    colour_weight_decays: tuple[float, ...] = setting(
        "metric.colour_weight_decays", (0.01, 0.03, 0.1),
        "weight decays tried for the colour probe; the pair that cross-validates best on the training rows is "
        "kept (one of each: no cross-validation)")


@dataclass(frozen=True)
class EpisodicSettings(RecipeSettings):
    """What the few-shot recipes share: episodes of ``n_way`` categories, trained on the training catalog's
    classes and scored on the test catalog's classes that training lacks."""

    needs_test: ClassVar[bool] = True
    scope: ClassVar[str] = "fewshot"

    backbone: str = setting("fewshot.backbone", "efficientnet_lite0", "the frozen backbone")
    epochs: int = setting("main.num_epochs", 2, "training epochs of episodes_per_epoch episodes (0: training-free)")
    n_way: int = setting("fewshot.n_way", 5, "classes per episode")
    train_shot: int = setting("fewshot.train_shot", 1, "support images per class in training episodes")
    q_query: int = setting("fewshot.q_query", 15, "query images per class in an episode")
    episodes_per_epoch: int = setting("fewshot.episodes_per_epoch", 250, "training episodes between validations")
    validation: str = setting("fewshot.validation", "base", "'base' (held-out base images) or 'novel'")
    val_episodes: int = setting("fewshot.val_episodes", 100, "validation episodes")
    shots: tuple[int, ...] = setting("fewshot.shots", (1, 5), "support images per class in test episodes")
    episodes: int = setting("fewshot.episodes", 600, "test episodes per shot count")
    names: bool = setting("fewshot.names", True, "also score prototypes with a prior from each category's name "
                                                 "(its weight chosen on the base classes)")


@dataclass(frozen=True)
class ProtoNetSettings(EpisodicSettings):
    """Few-shot classification of novel categories with Prototypical Networks (``configs/protonet.gin``):
    trained episodically on the training catalog's classes, scored on N-way K-shot episodes of the test
    catalog's classes that training lacks."""

    recipe: ClassVar[str] = "protonet"
    config: ClassVar[str] = "protonet.gin"

    head_start: str = setting("fewshot.head_start", "whitened", "the trained head's start: 'whitened' or 'cl2n'")
    lr: float = setting("EpisodicTask.lr", 1e-4, "learning rate")


@dataclass(frozen=True)
class RelationSettings(EpisodicSettings):
    """A Relation Network (Sung et al., 2018) trained episodically (``configs/relation.gin``): the relation-net
    notebook's method, scored like :class:`ProtoNetSettings`."""

    recipe: ClassVar[str] = "relation"
    config: ClassVar[str] = "relation.gin"

    epochs: int = setting("main.num_epochs", 6, "training epochs of episodes_per_epoch episodes")
    embedding: str = setting("fewshot.embedding", "pretrained",
                             "'pretrained' (frozen feature maps, cached) or 'conv4' (the paper's network)")
    image_size: int | None = setting("fewshot.image_size", None, "conv4's input size (None: 84)")
    lr: float = setting("EpisodicTask.lr", 1e-3, "learning rate")
    augment: str = setting("train_transform.augment", "none", "augmentation of conv4's training images")
    rotation: int = setting("train_transform.rotation", 15, "random rotation of conv4's training images")


@dataclass(frozen=True)
class AttributeSettings(RecipeSettings):
    """Every attribute of a product from one network (``configs/attributes.gin``): a head per catalog column
    (category, colour, gender, season, usage) on one shared backbone."""

    recipe: ClassVar[str] = "attributes"
    config: ClassVar[str] = "attributes.gin"
    scope: ClassVar[str] = "attributes"

    columns: tuple[str, ...] = setting("attributes.columns", ("articleType", "baseColour", "gender", "season", "usage"),
                                 "the catalog columns to predict, a head each")
    backbone: str = setting("MultiTaskNet.backbone", "efficientnet_lite0", "the shared backbone")
    epochs: int = setting("main.num_epochs", 0, "fine-tuning epochs after the probes")
    min_class_count: int = setting("attributes.min_class_count", 1, "values with fewer images are masked")
    linear_probe: bool = setting("attributes.linear_probe", True, "fit each head on frozen features first")
    probe_power: float = setting("attributes.probe_power", 1.0, "class balance of the probes' loss")
    probe_weight_decay: float = setting("attributes.probe_weight_decay", 3e-5, "L2 penalty of the probes")
    batch_size: int = setting("attributes.batch_size", 32, "fine-tuning batch size")
    val_fraction: float = setting("attributes.val_fraction", 0.1, "training images held out")
    sampler_power: float = setting("attributes.sampler_power", 0.0, "class balance of fine-tuning batches")
    dropout: float = setting("MultiTaskNet.dropout", 0.2, "dropout before the heads while fine-tuning")
    colour_heads: tuple[str, ...] = setting("MultiTaskNet.colour_heads", ("baseColour",),
                                      "heads that also see the photo's foreground colour descriptor")
    lr: float = setting("torch.optim.AdamW.lr", 1e-4, "fine-tuning learning rate")
    weight_decay: float = setting("torch.optim.AdamW.weight_decay", 0.05, "fine-tuning weight decay")
    label_smoothing: float = setting("MultiTaskTask.label_smoothing", 0.1, "fine-tuning label smoothing")
    tta: bool = setting("evaluate_attributes.tta", True, "score each test image averaged with its mirror image")


#: recipe name → its settings, the one table :func:`tailor.fit` consults
RECIPES: dict[str, type[RecipeSettings]] = {
    cls.recipe: cls for cls in (TransferSettings, FinetuneSettings, TripletSettings, ProtoNetSettings,
                                RelationSettings, AttributeSettings)}


def recipe_settings(recipe: str, **values: Any) -> RecipeSettings:
    """The settings of ``recipe`` with ``values`` in place of the defaults."""
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}: one of {', '.join(RECIPES)}")
    return RECIPES[recipe]().replace(**values)
