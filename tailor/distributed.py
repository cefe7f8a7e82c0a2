"""Several processes, one run: which process this is, which rows of a dataset it computes, and how the pieces
come back together in dataset order.

A run becomes multi-process when the Trainer's bindings ask for more than one device
(``make_trainer.devices`` / ``num_nodes``, with ``make_trainer.accelerator`` and ``strategy``) or when it was
started by ``torchrun`` or ``srun`` with several tasks. Lightning Fabric then launches the processes (or joins
the ones a launcher started) and sets up the process group; Lightning's Trainer, used later for fine-tuning,
finds that group and joins it. Feature passes, evaluation and prediction split their rows across the ranks
(:meth:`Ranks.sampler`), each rank computes its share on its own device, and :meth:`Ranks.gather` hands every
rank all the rows in dataset order. Rank 0 alone fits probes and writes the run folder.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DistributedSampler, Sampler

from tailor.models.files import save_model_file
from tailor.runtime import device_setting, resolve_device

log = logging.getLogger(__name__)


@dataclass
class Ranks:
    """This process's place in a run: ``world_size`` processes, this one ``rank``, computing on ``device``."""

    world_size: int
    rank: int
    device: torch.device
    fabric: Any = None  # lightning.fabric.Fabric when world_size > 1

    @property
    def is_zero(self) -> bool:
        return self.rank == 0

    @property
    def several(self) -> bool:
        return self.world_size > 1

    def sampler(self, length: int) -> Sampler | None:
        """The rows this rank computes, in order (``None``: all of them). Padded so every rank has as many
        rows; :meth:`gather` drops the repeats."""
        if not self.several:
            return None
        return DistributedSampler(range(length), num_replicas=self.world_size, rank=self.rank, shuffle=False)

    def gather(self, values: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every rank's ``values`` (one per row in ``rows``), on every rank, sorted by row, repeats dropped.

        Ranks may hold different counts (a worker skipped an unreadable image): they are padded to the longest
        before the collective and trimmed after.
        """
        if not self.several:
            order = torch.argsort(rows)
            return values[order], rows[order]
        counts = self._all_gather(torch.tensor([len(rows)], device=self.device)).flatten().tolist()
        longest = max(counts)
        pad = longest - len(rows)
        padded_values = torch.cat([values, values.new_zeros((pad, *values.shape[1:]))]) if pad else values
        padded_rows = torch.cat([rows, rows.new_full((pad,), -1)]) if pad else rows
        all_values = self._all_gather(padded_values.to(self.device)).cpu()
        all_rows = self._all_gather(padded_rows.to(self.device)).cpu()
        values = torch.cat([all_values[r, :n] for r, n in enumerate(counts)])
        rows = torch.cat([all_rows[r, :n] for r, n in enumerate(counts)])
        unique, first = np.unique(rows.numpy(), return_index=True)  # sorted rows, each once
        return values[torch.as_tensor(first)], torch.as_tensor(unique)

    def gather_objects(self, item: Any) -> list[Any]:
        """Every rank's ``item`` (a small picklable object), in rank order."""
        if not self.several:
            return [item]
        out: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(out, item)
        return out

    def broadcast(self, item: Any) -> Any:
        """Rank 0's ``item`` on every rank."""
        if not self.several:
            return item
        return self.fabric.broadcast(item, src=0)

    def _all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        gathered = self.fabric.all_gather(tensor)
        return gathered.reshape(self.world_size, *tensor.shape)


_current: Ranks | None = None


def save_on_rank_zero(path, contents: dict) -> None:
    """Write a weights-only file of the run (model, features, few-shot net) from rank 0 only: the other ranks
    hold the same contents, and one writer per file is what keeps an atomic write atomic."""
    if current().is_zero:
        save_model_file(path, contents)


@dataclass(frozen=True)
class ProcessLayout:
    """How many processes a command asks for, in Lightning's terms (``make_trainer.accelerator``, ``devices``,
    ``num_nodes`` and ``strategy`` in a config): the training layer reads them from its settings and passes
    them here, so this module knows nothing of the Trainer."""

    accelerator: str = "auto"
    devices: int | str | list = "auto"
    num_nodes: int = 1
    strategy: str = "auto"


def _device_count(devices, accelerator: str = "auto", device: str | None = None) -> int:
    """How many processes ``make_trainer.devices`` asks for. ``'auto'`` means what it means to Lightning's
    Trainer: every GPU when the accelerator and ``runtime.device`` leave the choice open, else one."""
    if devices == "auto":
        open_choice = accelerator in ("auto", "gpu", "cuda") and str(device or device_setting()) == "auto"
        return max(1, torch.cuda.device_count()) if open_choice and torch.cuda.is_available() else 1
    if isinstance(devices, (list, tuple)):
        return len(devices)
    if isinstance(devices, str):
        devices = devices.strip()
        if devices.isdigit():
            return int(devices)
        if "," in devices:
            return len([d for d in devices.split(",") if d.strip()])
        return 1
    if devices == -1:
        return max(1, torch.cuda.device_count())
    return int(devices) if devices and devices > 0 else 1


def launched_externally() -> int:
    """The world size a launcher set up (torchrun, or srun: Lightning's own detection of both), else 1."""
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    if TorchElasticEnvironment.detect():
        return int(os.environ.get("WORLD_SIZE", 1))
    if SLURMEnvironment.detect():
        return int(os.environ.get("SLURM_NTASKS", 1))
    return 1


def ranks(device: str | None = None, devices: int | str | None = None, layout: ProcessLayout | None = None) -> Ranks:
    """This process's :class:`Ranks`, launching or joining the other processes the first time several are
    asked for. ``device``: the single-process device (default ``runtime.device``); ``layout``: the processes
    the run's settings ask for (default: one); ``devices`` overrides its ``devices`` (the CLI's ``--devices``)."""
    global _current
    if _current is not None and _current.several:
        return _current  # processes are launched once; later calls join them
    layout = layout or ProcessLayout()
    accelerator = layout.accelerator
    devices = layout.devices if devices is None else devices
    num_nodes = int(layout.num_nodes or 1)
    external = launched_externally()
    if _device_count(devices, accelerator, device) * num_nodes <= 1 and external <= 1:
        _current = Ranks(1, 0, resolve_device(device))
        return _current
    _current = _launch(accelerator, devices, num_nodes, layout.strategy, device, external)
    return _current


def _launch(accelerator, devices, num_nodes: int, strategy: str, device: str | None, external: int) -> Ranks:
    from lightning.fabric import Fabric

    if device is not None and accelerator == "auto":
        accelerator = "cpu" if resolve_device(device).type == "cpu" else "cuda"
    if external > 1 and _device_count(devices, accelerator, device) * num_nodes != external:
        # the launcher's layout wins over the bindings: processes per node, and nodes
        per_node = os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("SLURM_NTASKS_PER_NODE", "").split("(")[0]
        local = int(per_node) if per_node.isdigit() and int(per_node) > 0 else external
        devices, num_nodes = local, max(1, external // local)
    if strategy in (None, "auto"):
        strategy = "ddp"
    fabric = Fabric(accelerator=accelerator, devices=devices, num_nodes=num_nodes, strategy=strategy)
    fabric.launch()
    log.info("rank %d of %d on %s", fabric.global_rank, fabric.world_size, fabric.device)
    return Ranks(fabric.world_size, fabric.global_rank, fabric.device, fabric)


def current() -> Ranks:
    """The :class:`Ranks` set up by the command (one process on ``runtime.device`` when none is)."""
    return _current if _current is not None else ranks()


def reset() -> None:
    """Forget a single-process setting, so the next :func:`current` reads the bindings again (a command sets
    them up first; tests change bindings between runs in one process). Launched processes stay."""
    global _current
    if _current is not None and not _current.several:
        _current = None
