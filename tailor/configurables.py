"""Every name a gin file may bind, registered in one place at the edge.

gin only knows a ``@gin.configurable`` once its module is imported. The front-ends (the ``tailor`` command,
the server's launcher, a run's saved ``config.gin`` read back by ``tailor audit``) call :func:`parse`, which
imports every configurable module first and then parses. The modules below never import this one, so the
configuration layer (:mod:`tailor.config`) stays free of the recipes and no import runs in a circle.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

with warnings.catch_warnings():  # gin registers every torch class, including deprecated ones
    warnings.simplefilter("ignore")
    import gin.torch.external_configurables  # noqa: F401  (torch.optim.Adam.lr and friends)

from tailor import config, experiment, run_inputs  # noqa: F401


def parse(config_files: Sequence[str | Path], bindings: Sequence[str]) -> None:
    """Clear gin, then apply ``config_files`` in order and ``bindings`` after them (bindings win), with every
    tailor name registered."""
    config.parse(config_files, bindings)
