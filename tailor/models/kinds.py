"""The table of model kinds (timm's register pattern): every kind of saved model tailor makes, with what tells
it apart in a model file, the network class it builds, how it loads, and what it outputs. Loading
(:mod:`tailor.models.registry`), predicting (:mod:`tailor.inference`), serving, exporting
(:mod:`tailor.deploy.graph`) and the Python API all consult this table, so a new kind is one
:func:`register_kind` call beside its module's loader.

Outputs are what predictors and exported graphs deal in: ``classifier`` (class probabilities),
``attributes`` (probabilities per attribute) or ``embedding`` (unit vectors).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # no torch at run time: the exported-model path reads OUTPUTS from here
    from torch import nn

OUTPUTS = ("classifier", "attributes", "embedding")


@dataclass(frozen=True)
class ModelKind:
    """One kind of model. ``holds``: whether a loaded model file is of this kind; ``load``: the network in
    eval mode from ``(path, contents)``; ``module``: its class, for telling a network's kind."""

    name: str
    output: str
    module: type  # a torch.nn.Module subclass
    holds: Callable[[dict], bool]
    load: Callable[[str | Path, dict], "nn.Module"]


#: name → kind, in the order they are tried on a file (the most specific first; the catch-all last)
KINDS: dict[str, ModelKind] = {}


def register_kind(kind: ModelKind) -> ModelKind:
    """Add ``kind`` to the table (a name registered twice is a mistake, not an override)."""
    if kind.output not in OUTPUTS:
        raise ValueError(f"model kind {kind.name!r}: output {kind.output!r} is not one of {OUTPUTS}")
    if kind.name in KINDS:
        raise ValueError(f"model kind {kind.name!r} is registered already")
    KINDS[kind.name] = kind
    return kind


def kind_of_file(saved: dict) -> ModelKind:
    """The kind of model a loaded model file holds."""
    for kind in KINDS.values():
        if kind.holds(saved):
            return kind
    raise ValueError(f"not a tailor model file (format {saved.get('format')!r}); known kinds: {', '.join(KINDS)}")


def kind_of_module(model: "nn.Module") -> ModelKind | None:
    """The kind of a network (the most specific class it is an instance of), or ``None``."""
    matches = [k for k in KINDS.values() if isinstance(model, k.module)]
    return min(matches, key=lambda k: type(model).__mro__.index(k.module), default=None)
