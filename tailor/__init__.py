"""tailor: tailor pretrained image models to a product catalog.

>>> import tailor
>>> catalog = tailor.read_catalog("data/sample/styles.csv")            # or Catalog.from_frame(df, root=…)
>>> splits = tailor.year_splits(catalog)                               # the seed's year-parity splits
>>> model = tailor.fit(splits.train_top, "transfer", test=splits.test_top)
>>> model.results.per_class                                            # a DataFrame
>>> model.predict(["photo.jpg"], k=5)
>>> model.save("runs/transfer"); tailor.load("runs/transfer")

Names are imported when first used, so ``import tailor`` stays fast (no torch until a model is needed).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name → the module that defines it
_EXPORTS = {
    "Catalog": "tailor.data.catalog",
    "CatalogError": "tailor.data.catalog",
    "read_catalog": "tailor.data.catalog",
    "year_splits": "tailor.api.splits",
    "YearSplits": "tailor.api.splits",
    "fit": "tailor.api.fitting",
    "load": "tailor.api.model",
    "Model": "tailor.api.model",
    "Results": "tailor.api.results",
    "audit": "tailor.api.audit",
    "Audit": "tailor.api.audit",
    "TransferSettings": "tailor.api.settings",
    "FinetuneSettings": "tailor.api.settings",
    "TripletSettings": "tailor.api.settings",
    "ProtoNetSettings": "tailor.api.settings",
    "RelationSettings": "tailor.api.settings",
    "AttributeSettings": "tailor.api.settings",
    "RECIPES": "tailor.api.settings",
}
_SUBMODULES = ("fewshot",)

__all__ = sorted([*_EXPORTS, *_SUBMODULES, "__version__"])


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"tailor.{name}")
    else:
        raise AttributeError(f"module 'tailor' has no attribute {name!r}")
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # for type checkers and editors: the names as they are
    from tailor import fewshot
    from tailor.api.audit import Audit, audit
    from tailor.api.fitting import fit
    from tailor.api.model import Model, load
    from tailor.api.results import Results
    from tailor.api.settings import (RECIPES, AttributeSettings, FinetuneSettings, ProtoNetSettings,
                                     RelationSettings, TransferSettings, TripletSettings)
    from tailor.api.splits import YearSplits, year_splits
    from tailor.data.catalog import Catalog, CatalogError, read_catalog
