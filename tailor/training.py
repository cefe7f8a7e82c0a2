"""What every training run shares: the Lightning Trainer (devices, precision, checkpoints, logs, progress),
seeding that makes a resumed run repeat an uninterrupted one, and fitting that keeps the best checkpoint."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.plugins.io import TorchCheckpointIO

from tailor import distributed
from tailor.data.datasets import streams
from tailor.data.samplers import BalancedSampler, training_loader
from tailor.evaluation.plots import plot_curves
from tailor.files import atomic_write
from tailor.metrics_log import ResumableCSVLogger
from tailor.models.files import load_model_file
from tailor.runtime import worker_count

log = logging.getLogger(__name__)


def fit_best(trainer: L.Trainer, task: L.LightningModule, train_loader, val_loaders, run_dir: Path, seed: int,
             curves_title: str, runtime: distributed.Runtime | None = None) -> tuple[int, float | None]:
    """Fit ``task`` (resuming from ``checkpoints/last.ckpt`` when a run was interrupted), load its best
    checkpoint back into it and draw ``curves.png`` with that checkpoint marked.

    Returns the best checkpoint's step and monitored score. Raises KeyboardInterrupt when training was
    interrupted (the checkpoints stay for the rerun). Under DDP, rank 0 reads the best checkpoint and every
    rank gets its weights (through ``runtime``), so the passes that follow (evaluation, features) can still be
    shared.
    """
    last = Path(run_dir) / "checkpoints" / "last.ckpt"
    if last.is_file():
        log.info("resuming from %s", last)
    torch.manual_seed(seed)
    # one memory layout for training, whatever ran before: a feature pass over the same network (a probe, a
    # cold feature cache) leaves its convolutions in channels_last, and a run that found its features cached
    # would otherwise train in the other layout and end with slightly different weights
    task.to(memory_format=torch.channels_last)
    trainer.fit(task, train_loader, val_loaders, ckpt_path=str(last) if last.is_file() else None)
    if trainer.interrupted:
        raise KeyboardInterrupt
    ranks = runtime or distributed.Runtime.local()
    best = None
    if trainer.is_global_zero:
        best = load_model_file(trainer.checkpoint_callback.best_model_path or last)
        best = {"state_dict": best["state_dict"], "global_step": int(best.get("global_step", 0))}
    best = ranks.broadcast(best)
    task.load_state_dict(best["state_dict"])
    best_step = best["global_step"]
    metrics_csv = Path(run_dir) / "metrics.csv"
    if trainer.is_global_zero and metrics_csv.is_file():
        plot_curves(pd.read_csv(metrics_csv), Path(run_dir) / "curves.png", best_step=best_step, title=curves_title)
    score = trainer.checkpoint_callback.best_model_score
    return best_step, float(score) if score is not None else None


def fine_tune(task: L.LightningModule, train_ds, val_ds, sampler_targets: np.ndarray, run_dir: Path,
              num_epochs: int, seed: int, batch_size: int, sampler_power: float, num_workers: int | str,
              curves_title: str, runtime: distributed.Runtime | None = None,
              trainer: TrainerSettings | None = None) -> dict:
    """The classifiers' fine-tuning stage: batches drawn by a :class:`BalancedSampler` over
    ``sampler_targets`` (one class per training item), validation on ``val_ds`` when it has items (else the
    training accuracy picks the checkpoint), then :func:`fit_best`, on ``runtime``, with the ``trainer``
    settings. Returns the facts results.json keeps."""
    from torch.utils.data import DataLoader

    train_loader = training_loader(train_ds, BalancedSampler(sampler_targets, power=sampler_power, seed=seed), seed,
                                   batch_size, num_workers, drop_last=len(train_ds) > batch_size)
    val_workers = worker_count(num_workers, streams(val_ds))
    val_loader = DataLoader(val_ds, batch_size=64, num_workers=val_workers) if len(val_ds) else None
    trainer = make_trainer(run_dir, trainer, runtime, max_epochs=num_epochs, seed=seed,
                           **({} if val_loader else {"monitor": "train/acc"}))
    best_step, best_score = fit_best(trainer, task, train_loader, val_loader, run_dir, seed, curves_title,
                                     runtime)
    return {"best_step": best_step, "best_val_acc": best_score, "monitor": trainer.checkpoint_callback.monitor,
            "epochs": trainer.current_epoch, "steps": trainer.global_step}


class EpochSeed(Callback):
    """Reseed torch at each epoch start, so augmentation and dropout after a resume match an unbroken run."""

    def __init__(self, seed: int):
        self.seed = seed

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        torch.manual_seed(self.seed * 1_000_003 + trainer.current_epoch)
        np.random.seed((self.seed * 7919 + trainer.current_epoch) % 2**32)


class Throughput(Callback):
    """Images per second in the progress bar and the logs."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        seconds = time.perf_counter() - self._start
        if seconds > 0:
            pl_module.log("img_s", len(batch[0]) / seconds, prog_bar=True, on_step=True, on_epoch=False)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written atomically (temporary file, fsync, rename) and read with ``weights_only=True``:
    a run killed while saving never leaves a truncated ``last.ckpt`` that the next run would try to resume."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        atomic_write(path, lambda handle: torch.save(checkpoint, handle))

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        return load_model_file(path)


@dataclass(frozen=True)
class TrainerSettings:
    """How Lightning trains (bound as ``make_trainer.*``): a recipe replaces what it decides itself (epochs,
    seed, the monitored metric) and passes the rest on to :func:`make_trainer`.

    ``precision`` defaults to bf16 mixed precision on a GPU and 32-bit on the CPU. ``accelerator``,
    ``devices``, ``strategy`` and ``num_nodes`` go straight to Lightning: multi-GPU and multi-node DDP need
    no code change. Left at 'auto' in a single process, they follow the runtime's device, so training runs
    where every other step does. ``logger``: "csv", or also "tensorboard" or "mlflow".
    """

    max_epochs: int = 5
    max_steps: int = -1
    monitor: str | None = "val/acc"
    accelerator: str = "auto"
    devices: int | str = "auto"
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str | None = None
    val_check_interval: float | int | None = None
    early_stopping_patience: int | None = None
    logger: str = "csv"
    log_every_n_steps: int = 10
    gradient_clip_val: float | None = 1.0
    progress: bool = True
    seed: int = 0
    limit_val_batches: float | int | None = None

    @property
    def layout(self) -> distributed.ProcessLayout:
        """The processes these settings ask for: a run launches them before its first pass, and the Trainer
        later joins the same process group."""
        return distributed.ProcessLayout(accelerator=self.accelerator, devices=self.devices,
                                         num_nodes=self.num_nodes, strategy=self.strategy)


def make_trainer(run_dir: str | Path, settings: TrainerSettings | None = None,
                 runtime: distributed.Runtime | None = None, **changes) -> L.Trainer:
    """A Trainer that validates at ``val_check_interval``, keeps ``checkpoints/best.ckpt`` by ``monitor`` and
    ``checkpoints/last.ckpt`` at each epoch end, and logs to ``metrics.csv`` (plus TensorBoard or MLflow), as
    ``settings`` (:class:`TrainerSettings`) say with ``changes`` applied (``max_epochs=3``…), on ``runtime``
    (where it computes)."""
    s = replace(settings or TrainerSettings(), **changes)
    accelerator, devices, precision = s.accelerator, s.devices, s.precision
    run_dir = Path(run_dir)
    runtime = runtime or distributed.Runtime.local()
    if accelerator == "auto" and devices == "auto" and not runtime.several:
        device = runtime.device
        accelerator, devices = ("cpu", 1) if device.type == "cpu" else ("gpu", [device.index or 0])
    if precision is None:
        precision = "bf16-mixed" if torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda") else "32-true"
    ckpt_dir = run_dir / "checkpoints"
    callbacks: list[Callback] = [
        ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=s.monitor, mode="max", save_top_k=1,
                        auto_insert_metric_name=False, enable_version_counter=False),
        # the latest state at every epoch end, to resume from; not `save_last=True` beside save_top_k=0, which
        # newer Lightning writes only after a top-k save, so only once training has ended
        ModelCheckpoint(dirpath=ckpt_dir, filename="last", monitor=None, save_top_k=1,
                        save_on_train_epoch_end=True, enable_version_counter=False),
        EpochSeed(s.seed),
        Throughput(),
    ]
    if s.early_stopping_patience:
        callbacks.append(EarlyStopping(monitor=s.monitor, mode="max", patience=s.early_stopping_patience))
    if s.progress:
        callbacks.append(TQDMProgressBar(refresh_rate=5))
    loggers = [ResumableCSVLogger(run_dir)]
    if s.logger == "tensorboard":
        from lightning.pytorch.loggers import TensorBoardLogger
        loggers.append(TensorBoardLogger(run_dir, name="tensorboard", version=""))
    elif s.logger == "mlflow":
        from lightning.pytorch.loggers import MLFlowLogger
        loggers.append(MLFlowLogger(experiment_name=run_dir.name, tracking_uri=f"file:{run_dir / 'mlruns'}"))
    elif s.logger != "csv":
        raise ValueError(f"unknown logger {s.logger!r}: csv, tensorboard or mlflow")
    kwargs = {}
    if s.val_check_interval is not None:
        kwargs["val_check_interval"] = s.val_check_interval
    if s.limit_val_batches is not None:
        kwargs["limit_val_batches"] = s.limit_val_batches
    return L.Trainer(
        default_root_dir=run_dir, max_epochs=s.max_epochs, max_steps=s.max_steps, accelerator=accelerator,
        devices=devices, strategy=s.strategy, num_nodes=s.num_nodes, precision=precision, callbacks=callbacks,
        logger=loggers, log_every_n_steps=s.log_every_n_steps, gradient_clip_val=s.gradient_clip_val,
        enable_progress_bar=s.progress, enable_model_summary=False, deterministic=False,
        plugins=[AtomicCheckpointIO()],
        num_sanity_val_steps=0, **kwargs)
