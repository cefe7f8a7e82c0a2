"""What ``tailor run`` reads from gin besides a recipe's own parameters, read here, once, at the edge.

A run's tables (``FashionDataset.*`` and ``evaluate/FashionDataset.*``) and the bindings of other scopes a
recipe needs (``evaluate.group``, ``TransferNet.saved_model_path``…) are resolved by :func:`run_data` and
:func:`transfer_inputs` before the recipe starts, and passed to it: no module below the front-ends asks gin
for them. ``FashionDataset`` itself is a plain class; the binding name ``FashionDataset`` belongs to
:class:`BoundFashionDataset`, which only this edge builds.
"""

from __future__ import annotations

import logging

import gin

from tailor.config import ConfigError, bound_value
from tailor.data.datasets import FashionDataset, RunData
from tailor.recipes.transfer import TransferInputs

log = logging.getLogger(__name__)


@gin.configurable("FashionDataset", module="tailor.data.datasets")
class BoundFashionDataset(FashionDataset):
    __doc__ = FashionDataset.__doc__


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
    return TransferInputs(group=bound_value("evaluate.group") or "all",
                          backbone=bound_value("TransferNet.backbone"),
                          saved_model_path=bound_value("TransferNet.saved_model_path"),
                          image_size=bound_value("TransferNet.image_size"))


def saved_model(binding: str, mode: str) -> str | None:
    """The model file an evaluate-mode run scores, bound as ``binding`` (``"MultiTaskNet.saved_model_path"``);
    None in a training run."""
    if mode != "evaluate":
        return None
    path = bound_value(binding)
    if not path:
        raise ConfigError(f"evaluation needs a model: -p \"{binding}='RUN/model.pt'\"")
    return path
