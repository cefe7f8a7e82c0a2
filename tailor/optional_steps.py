"""Late steps of a run that must not cost it what it already computed: the search index, the map, the report.

A metric run computes every embedding and every kNN score before it writes its index; if the index then
fails (a full disk, a bad path), the scores must still reach ``results.json``, with the error beside them.
"""

from __future__ import annotations

import logging
from typing import Callable

log = logging.getLogger(__name__)


def optional_step(results: dict, name: str, step: Callable[[], object]) -> bool:
    """Run ``step``; on failure log the error, keep it in ``results["failed_steps"][name]`` and go on.
    Returns whether the step succeeded."""
    try:
        step()
    except Exception as err:  # noqa: BLE001 — recorded, shown at the end, and the run's other outputs kept
        log.error("%s failed: %s", name, err, exc_info=log.isEnabledFor(logging.DEBUG))
        results.setdefault("failed_steps", {})[name] = f"{type(err).__name__}: {err}"
        return False
    return True
