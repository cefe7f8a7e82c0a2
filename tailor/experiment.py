"""One run of ``tailor run``: make the run folder, save the config, dispatch to the method's recipe.

The seed's ``main.num_epochs`` binding lives here. Every run writes ``experiments/<name>/`` with the
``config.gin`` it was started with (then the operative one), its checkpoints, logs, results and plots. Running
the same command again resumes an interrupted run from its last checkpoint.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Callable

import gin
import lightning as L

from tailor import config as tailor_config
from tailor import distributed
from tailor import run_folder
from tailor import run_inputs
from tailor.data.datasets import FashionDataset, RunData
from tailor.evaluation.report import build_report
from tailor.files import write_json
from tailor.optional_steps import optional_step

log = logging.getLogger(__name__)


#: method name → recipe, bound to its scope's parameters (:data:`tailor.run_inputs.RECIPES`). Each recipe takes
#: (run_dir, data, mode, num_epochs, seed, runtime) and what :func:`tailor.run_inputs.recipe_inputs` resolves,
#: and returns results.json's dict.
METHODS: dict[str, Callable[..., dict]] = run_inputs.RECIPES


class RunConflict(RuntimeError):
    """A run folder that holds a different configuration."""


@gin.configurable
def main(name: str | None = None, method: str = "transfer", mode: str = "train", num_epochs: int = 5,
         seed: int = 0, output_dir: str = "experiments", fresh: bool = False, default_name: str = "run") -> dict:
    """Run ``method`` in ``output_dir/name``.

    ``fresh``: delete an existing run folder of that name first, instead of resuming it.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: one of {sorted(METHODS)}")
    run_dir = Path(output_dir) / (name or default_name)
    requested = tailor_config.full_config()
    inputs = run_inputs.recipe_inputs(method, mode)  # what the recipe takes from the bindings, resolved once
    # where the run computes, resolved here once and passed down: several processes when the Trainer's
    # bindings ask (launched here), else one on runtime.device
    ranks = distributed.start(run_inputs.device_setting(), layout=inputs["parts"].trainer.layout)
    data = run_inputs.run_data(mode)  # on every rank: a binding FashionDataset refuses stops them all here
    problem = None
    if ranks.is_zero:
        try:
            _prepare_run_dir(run_dir, requested, fresh)
            run_folder.RunFolder(run_dir).write_sources(*_data_sources(data, mode))
        except RunConflict as err:
            problem = str(err)
    problem = ranks.broadcast(problem)  # every rank stops on rank 0's error, none waits for it forever
    if problem:
        raise RunConflict(problem)
    L.seed_everything(seed, workers=True, verbose=False)
    started = time.time()
    results = METHODS[method](run_dir=run_dir, data=data, mode=mode, num_epochs=num_epochs, seed=seed,
                              runtime=ranks, **inputs)
    if not results or not ranks.is_zero:  # a rank other than 0: rank 0 writes the run's files
        return {"run_dir": str(run_dir), "secondary_rank": True}
    results["seconds"] = round(time.time() - started, 1)
    results["device"] = str(ranks.device)  # where rank 0 computed: what runtime.device / 'auto' resolved to
    if ranks.several:
        results["world_size"] = ranks.world_size
    (run_dir / run_folder.OPERATIVE_CONFIG).write_text(tailor_config.operative_config())
    write_json(run_dir / run_folder.RESULTS, {"name": run_dir.name, "seed": seed, **results})
    # the results are on disk: a report that cannot be drawn is an error to show, not a reason to lose them
    if not optional_step(results, "report", lambda: build_report(run_dir)):
        write_json(run_dir / run_folder.RESULTS, {"name": run_dir.name, "seed": seed, **results})
    log.info("run folder: %s", run_dir)
    return {"run_dir": str(run_dir), **results}


def _data_sources(data: RunData, mode: str) -> tuple[run_folder.DataSource | None, run_folder.DataSource | None]:
    """The run's training and test tables as the run folder keeps them, so a later command on the run
    (``tailor audit``, ``tailor export``) reads them instead of parsing its config."""
    def source(spec: FashionDataset | None) -> run_folder.DataSource | None:
        if spec is None:
            return None
        table = spec.csv_file.resolve() if spec.csv_file else None
        return run_folder.DataSource(table, spec.root_dir.resolve(), spec.label_column)

    return source(data.train) if mode == "train" else None, source(data.test)


def _prepare_run_dir(run_dir: Path, requested: str, fresh: bool) -> None:
    saved = run_dir / run_folder.CONFIG
    if fresh and run_dir.exists():
        shutil.rmtree(run_dir)
    if saved.is_file() and (run_dir / "checkpoints").is_dir():
        if saved.read_text() != requested:
            raise RunConflict(
                f"{run_dir} holds a run with a different configuration; rerun with the same config to resume, "
                f"pick another name (-p \"main.name='…'\") or start over with --fresh")
        log.info("%s exists with the same configuration: resuming", run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    saved.write_text(requested)
