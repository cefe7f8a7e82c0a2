"""Every gin binding name, and what the front-ends resolve from them, once per command, at the edge.

Below the front-ends everything is plain: recipes, networks, tasks, tables and settings take their values as
arguments. Each binding name belongs to a bound version made here — a recipe function registered under its
scope (:data:`RECIPES`), a settings dataclass or factory under its old name (``make_trainer.*`` is
:class:`~tailor.training.TrainerSettings`), or a bound subclass of a class (``TransferNet.*``,
``FashionDataset.*``) — which only the front-ends call: :func:`run_data` (a run's tables),
:func:`recipe_inputs` (each recipe's :class:`~tailor.recipes.parts.RecipeParts` and what it takes from other
scopes), and the commands' own settings (``bound_serve``, ``bound_int8``, ``bound_ann``…).
"""

from __future__ import annotations

import logging
from typing import Callable

import gin

from tailor.config import ConfigError, bound_value
from tailor.data.datasets import FashionDataset, RunData
from tailor.data.transforms import Augmentation
from tailor.deploy.quantize import Int8Settings
from tailor.evaluation.settings import EvaluationSettings
from tailor.models.embedding import Projection
from tailor.models.heads import TransferNet
from tailor.models.multitask import MultiTaskNet
from tailor.names.classes import name_settings
from tailor.recipes.attributes import run_attributes
from tailor.recipes.fewshot import run_fewshot
from tailor.recipes.metric import run_metric
from tailor.recipes.parts import RecipeParts
from tailor.recipes.transfer import TransferInputs, run_transfer
from tailor.search import ann, lookalike
from tailor.serve.settings import ServeSettings
from tailor.tasks.calibration import calibration_settings
from tailor.tasks.classify import ClassificationTask
from tailor.tasks.episodic import EpisodicTask
from tailor.tasks.metric import MetricTask
from tailor.tasks.multitask import MultiTaskTask
from tailor.training import TrainerSettings

log = logging.getLogger(__name__)


def _bound(cls: type) -> type:
    """A subclass of ``cls`` whose constructor takes the bindings of ``cls``'s name (``TransferNet.dropout``…),
    for a front-end to hand to the code that builds one; ``cls`` itself stays plain, so a model loaded from
    its file is built from the file alone."""
    subclass = type(f"Bound{cls.__name__}", (cls,), {"__doc__": cls.__doc__, "__module__": __name__})
    return gin.configurable(cls.__name__, module=cls.__module__)(subclass)


# The tables, networks and tasks a front-end builds from, bound to their names' bindings (a recipe gets the
# networks and tasks in its RecipeParts).
BoundFashionDataset = _bound(FashionDataset)
BoundTransferNet = _bound(TransferNet)
BoundMultiTaskNet = _bound(MultiTaskNet)
BoundProjection = _bound(Projection)
BoundClassificationTask = _bound(ClassificationTask)
BoundMultiTaskTask = _bound(MultiTaskTask)
BoundMetricTask = _bound(MetricTask)
BoundEpisodicTask = _bound(EpisodicTask)

#: ``train_transform.*``: the training images' augmentation (:class:`tailor.data.transforms.Augmentation`)
bound_augmentation = gin.external_configurable(Augmentation, "train_transform", module="tailor.data.transforms")


#: ``evaluate.*``: how a classifier's test split is scored (:class:`tailor.evaluation.settings.EvaluationSettings`)
bound_evaluation = gin.external_configurable(EvaluationSettings, "evaluate", module="tailor.recipes.transfer")
#: ``evaluate_attributes.*``: the same for a multi-attribute model, whose every test row is scored
bound_attribute_evaluation = gin.external_configurable(EvaluationSettings, "evaluate_attributes",
                                                       module="tailor.recipes.attributes", denylist=["group"])

#: ``make_trainer.*``: how Lightning trains (:class:`tailor.training.TrainerSettings`)
bound_trainer = gin.external_configurable(TrainerSettings, "make_trainer", module="tailor.training")


@gin.configurable("runtime", module="tailor.runtime")
def device_setting(device: str = "auto") -> str:
    """The ``runtime.device`` binding: 'auto', 'cpu', 'cuda' or 'cuda:N' (:func:`tailor.runtime.resolve_device`),
    which ``tailor run`` passes down in a :class:`~tailor.distributed.Runtime`."""
    return device


#: ``serve.settings.*``: what a server accepts and how it batches (:class:`tailor.serve.settings.ServeSettings`)
bound_serve = gin.external_configurable(ServeSettings, "settings", module="serve")
#: ``export.quantize_int8.*``: how ``tailor export --quantize int8`` calibrates
#: (:class:`tailor.deploy.quantize.Int8Settings`)
bound_int8 = gin.external_configurable(Int8Settings, "quantize_int8", module="export")
#: ``names.*``: which categories a classifier carries by name (:func:`tailor.names.classes.name_settings`)
bound_names = gin.external_configurable(name_settings, "names")
#: ``calibration.*``: few-shot calibration (:func:`tailor.tasks.calibration.calibration_settings`)
bound_calibration = gin.external_configurable(calibration_settings, "calibration")
#: ``search.ann.*``: the approximate index (:class:`tailor.search.ann.AnnSettings`)
bound_ann = gin.external_configurable(ann.ann, "ann", module="search")
#: ``lookalike.settings.*``: the look-alike ranking (:class:`tailor.search.lookalike.LookalikeSettings`)
bound_lookalike = gin.external_configurable(lookalike.settings, "settings", module="lookalike")


def run_data(mode: str, quiet: bool = False) -> RunData:
    """The tables the bindings name: the plain ``FashionDataset`` bindings (the training table; in an
    evaluate-mode run, the table scored) and the test data (:func:`test_data`)."""
    return RunData(train=BoundFashionDataset(), test=test_data(required=mode == "evaluate", quiet=quiet))


def test_data(required: bool = False, quiet: bool = False) -> FashionDataset | None:
    """A run's test data: the ``evaluate/FashionDataset.*`` bindings (unscoped ones fill in what they leave).

    ``None`` when neither ``evaluate/FashionDataset.csv_file`` nor ``root_dir`` is bound (or bound to None: a
    fit with no test data), unless ``required`` (an evaluate-mode run, whose plain bindings may name the test
    data themselves); said in the log unless ``quiet``.
    """
    if not required and bound_value("evaluate/FashionDataset.csv_file") is None \
            and bound_value("evaluate/FashionDataset.root_dir") is None:
        if not quiet:
            log.info("no evaluate/FashionDataset.csv_file bound: skipping the test evaluation")
        return None
    with gin.config_scope("evaluate"):
        return BoundFashionDataset()


def transfer_inputs() -> TransferInputs:
    """The other scopes' bindings the transfer recipe needs."""
    return TransferInputs(evaluation=bound_evaluation(),
                          backbone=bound_value("TransferNet.backbone"),
                          saved_model_path=bound_value("TransferNet.saved_model_path"),
                          image_size=bound_value("TransferNet.image_size"),
                          names=bound_names(), calibration=bound_calibration())


#: each method's arguments from bindings outside its own scope: argument name → what resolves it, given the
#: run's mode
RECIPE_INPUTS: dict[str, dict[str, Callable[[str], object]]] = {
    "transfer": {"inputs": lambda mode: transfer_inputs()},
    "attributes": {"saved_model": lambda mode: saved_model("MultiTaskNet.saved_model_path", mode),
                   "evaluation": lambda mode: bound_attribute_evaluation()},
    "metric": {"ann": lambda mode: bound_ann(), "lookalike": lambda mode: bound_lookalike()},
    "fewshot": {"calibration": lambda mode: bound_calibration()},
}
RECIPE_INPUTS["protonet"] = RECIPE_INPUTS["fewshot"]
#: what the front-end passes every recipe itself, never a binding (:func:`tailor.experiment.main`)
PASSED_IN = ("data", "runtime", "parts")


def _recipe(recipe: Callable[..., dict], scope: str) -> Callable[..., dict]:
    """``recipe`` bound under ``scope`` (``transfer.batch_size``…), except the arguments passed in."""
    return gin.external_configurable(recipe, scope, module=recipe.__module__,
                                     denylist=[*PASSED_IN, *RECIPE_INPUTS[scope]])


#: each method's recipe (``main.method``), its own parameters bound under the recipe's scope (``transfer.*``,
#: ``metric.*``, ``fewshot.*``, ``attributes.*``)
RECIPES: dict[str, Callable[..., dict]] = {
    "transfer": _recipe(run_transfer, "transfer"), "metric": _recipe(run_metric, "metric"),
    "fewshot": _recipe(run_fewshot, "fewshot"), "attributes": _recipe(run_attributes, "attributes"),
}
RECIPES["protonet"] = RECIPES["fewshot"]


def recipe_parts() -> RecipeParts:
    """The networks, tasks and settings every recipe builds from, bound to the configuration."""
    return RecipeParts(trainer=bound_trainer(), augmentation=bound_augmentation(), transfer_net=BoundTransferNet,
                       classification_task=BoundClassificationTask, multitask_net=BoundMultiTaskNet,
                       multitask_task=BoundMultiTaskTask, projection=BoundProjection, metric_task=BoundMetricTask,
                       episodic_task=BoundEpisodicTask)


def recipe_inputs(method: str, mode: str) -> dict:
    """The keyword arguments ``method``'s recipe takes from bindings outside its own scope, resolved now:
    every recipe's parts (:func:`recipe_parts`), and its own table's entries."""
    return {"parts": recipe_parts(), **{name: resolve(mode) for name, resolve in RECIPE_INPUTS[method].items()}}


def saved_model(binding: str, mode: str) -> str | None:
    """The model file an evaluate-mode run scores, bound as ``binding`` (``"MultiTaskNet.saved_model_path"``);
    None in a training run."""
    if mode != "evaluate":
        return None
    path = bound_value(binding)
    if not path:
        raise ConfigError(f"evaluation needs a model: -p \"{binding}='RUN/model.pt'\"")
    return path
