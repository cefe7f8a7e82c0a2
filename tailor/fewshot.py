"""Few-shot classification from Python: ``tailor.fewshot.evaluate`` scores a method on N-way K-shot episodes
of a catalog's categories, the relation-net notebook's flow in one call.

>>> import tailor
>>> catalog = tailor.Catalog.from_frame(df, root="images/")
>>> tailor.fewshot.evaluate(catalog, method="relation", epochs=1)      # a table with 95 % CIs
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from tailor.api.fitting import fit
from tailor.api.results import fewshot_frame
from tailor.api.settings import ProtoNetSettings, RelationSettings
from tailor.data.catalog import Catalog
from tailor.data.splits import top_categories

#: the few-shot recipes, by the name :func:`evaluate` takes
METHODS = {"protonet": ProtoNetSettings, "relation": RelationSettings}

__all__ = ["METHODS", "ProtoNetSettings", "RelationSettings", "evaluate", "split_classes_by_frequency"]


def evaluate(catalog: Catalog, method: str = "protonet", *, base: Catalog | int = 20, ways: int = 5,
             shots: Sequence[int] = (1, 5), episodes: int = 600, out: str | Path | None = None,
             device: str = "auto", seed: int = 0, progress: bool = True, **settings: Any) -> pd.DataFrame:
    """Train ``method`` ("protonet" or "relation") episodically on the base categories and score it on
    ``episodes`` ``ways``-way episodes of the novel ones, for each number of ``shots``: a dataframe with each
    scorer's accuracy and 95 % confidence interval (the training-free prototypes — raw, CL2N, calibrated —
    always, beside the trained method).

    ``base``: the catalog of base categories; or a number N: the N most frequent categories of ``catalog``
    are the base, the others novel (the seed's protocol: the top 20). ``settings``: the method's settings
    (:class:`ProtoNetSettings` / :class:`RelationSettings`), e.g. ``epochs=0`` for training-free prototypes
    only. ``out``: keep the run folder there.
    """
    if method not in METHODS:
        raise ValueError(f"unknown few-shot method {method!r}: one of {', '.join(METHODS)}")
    if isinstance(base, int):
        base, novel = split_classes_by_frequency(catalog, base)
    else:
        novel = catalog
    model = fit(base, method, test=novel, out=out, device=device, seed=seed, progress=progress, n_way=ways,
                shots=tuple(shots), episodes=episodes, **settings)
    return fewshot_frame(model.results["fewshot"])


def split_classes_by_frequency(catalog: Catalog, base_classes: int = 20) -> tuple[Catalog, Catalog]:
    """The ``base_classes`` most frequent categories (ties alphabetically) and the rest, as two catalogs."""
    top = set(top_categories(catalog.frame["label"], base_classes))
    if len(top) >= catalog.frame["label"].nunique():
        raise ValueError(f"{catalog.source}: {catalog.frame['label'].nunique()} categories; keep some out of the "
                         f"{base_classes} base categories to test on (base=<a smaller number>)")
    in_base = catalog.frame["label"].isin(top)
    return catalog.subset(in_base), catalog.subset(~in_base)
