"""What a recipe assembles a run from — its networks, its training tasks, the augmentation and the Trainer's
settings — in one object the front-end passes in.

The front-ends pass the classes bound to the configuration (``TransferNet.*``, ``ClassificationTask.*``,
``train_transform.*``, ``make_trainer.*``…, in :func:`tailor.run_inputs.recipe_parts`); a recipe called
directly gets the plain classes and the defaults. So no network, task or transform reads a binding itself,
and a model loaded from a file is built from its file alone, whatever the process has bound.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tailor.data.transforms import Augmentation
from tailor.models.embedding import Projection
from tailor.models.heads import TransferNet
from tailor.models.multitask import MultiTaskNet
from tailor.tasks.classify import ClassificationTask
from tailor.tasks.episodic import EpisodicTask
from tailor.tasks.metric import MetricTask
from tailor.tasks.multitask import MultiTaskTask
from tailor.training import TrainerSettings


@dataclass(frozen=True)
class RecipeParts:
    """The classes a recipe builds from and the settings it trains with."""

    #: ``make_trainer.*``: how Lightning trains (a recipe sets epochs, seed and the monitored metric itself)
    trainer: TrainerSettings = field(default_factory=TrainerSettings)
    #: ``train_transform.*``: the training images' augmentation
    augmentation: Augmentation = field(default_factory=Augmentation)
    #: the classifier of the transfer recipe (``TransferNet.*``), and of each member of an ensemble
    transfer_net: type[TransferNet] = TransferNet
    #: its fine-tuning (``ClassificationTask.*``)
    classification_task: type[ClassificationTask] = ClassificationTask
    #: the attribute recipe's network (``MultiTaskNet.*``) and its fine-tuning (``MultiTaskTask.*``)
    multitask_net: type[MultiTaskNet] = MultiTaskNet
    multitask_task: type[MultiTaskTask] = MultiTaskTask
    #: the metric recipe's projection head (``Projection.*``) and its training (``MetricTask.*``)
    projection: type[Projection] = Projection
    metric_task: type[MetricTask] = MetricTask
    #: the few-shot recipe's episodic training (``EpisodicTask.*``)
    episodic_task: type[EpisodicTask] = EpisodicTask
