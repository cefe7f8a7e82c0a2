"""Several processes, one run: which process this is, which rows of a dataset it computes, and how the pieces
come back together in dataset order.

A run becomes multi-process when the Trainer's bindings ask for more than one device
(``make_trainer.devices`` / ``num_nodes``, with ``make_trainer.accelerator`` and ``strategy``) or when it was
started by ``torchrun`` or ``srun`` with several tasks. Lightning Fabric then launches the processes (or joins
the ones a launcher started) and sets up the process group; Lightning's Trainer, used later for fine-tuning,
finds that group and joins it. Feature passes, evaluation and prediction split their rows across the ranks
(:meth:`Runtime.sampler`), each rank computes its share on its own device, and :meth:`Runtime.gather` hands
every rank all the rows in dataset order. Rank 0 alone fits probes and writes the run folder.

A front-end (``tailor run``, a model command, the API, the server) calls :func:`start` once and passes the
:class:`Runtime` it returns down as an argument: nothing below it asks a module-level variable where it
computes. The one process-wide fact kept here is that Fabric launched this process's group, which can happen
once per process.
"""

from __future__ import annotations

import atexit
import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DistributedSampler, Sampler

from tailor.models.files import save_model_file
from tailor.runtime import resolve_device

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """Where this process computes and its place in a run: ``world_size`` processes, this one ``rank``,
    computing on ``device``. Passed down from the front-end to every pass, probe fit and trainer."""

    world_size: int
    rank: int
    device: torch.device
    fabric: Any = None  # lightning.fabric.Fabric when world_size > 1

    @classmethod
    def local(cls, device: str | torch.device = "auto") -> "Runtime":
        """One process on ``device`` ('auto': the first CUDA GPU when there is one, else the CPU)."""
        return cls(1, 0, resolve_device(device))

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

    def save(self, path, contents: dict) -> None:
        """Write a weights-only file of the run (model, features, few-shot net) from rank 0 only: the other
        ranks hold the same contents, and one writer per file is what keeps an atomic write atomic."""
        if self.is_zero:
            save_model_file(path, contents)

    def _all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        gathered = self.fabric.all_gather(tensor)
        return gathered.reshape(self.world_size, *tensor.shape)


#: the processes Fabric launched or joined in this process (it can do so once); None until then
_launched: Runtime | None = None


@dataclass(frozen=True)
class ProcessLayout:
    """How many processes a command asks for, in Lightning's terms (``make_trainer.accelerator``, ``devices``,
    ``num_nodes`` and ``strategy`` in a config): the training layer reads them from its settings and passes
    them here, so this module knows nothing of the Trainer."""

    accelerator: str = "auto"
    devices: int | str | list = "auto"
    num_nodes: int = 1
    strategy: str = "auto"


def _device_count(devices, accelerator: str = "auto", device: str | torch.device = "auto") -> int:
    """How many processes ``make_trainer.devices`` asks for. ``'auto'`` means what it means to Lightning's
    Trainer: every GPU when the accelerator and the device leave the choice open, else one."""
    if devices == "auto":
        open_choice = accelerator in ("auto", "gpu", "cuda") and str(device) == "auto"
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


def _leave_process_group() -> None:
    """Destroy the process group while the interpreter is still whole. Left to interpreter shutdown, Gloo's
    worker threads can still hold work objects whose tensors need the GIL, and the process aborts after its
    work is done (``terminate called without an active exception``, SIGABRT)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def launched_externally() -> int:
    """The world size a launcher set up (torchrun, or srun: Lightning's own detection of both), else 1."""
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    if TorchElasticEnvironment.detect():
        return int(os.environ.get("WORLD_SIZE", 1))
    if SLURMEnvironment.detect():
        return int(os.environ.get("SLURM_NTASKS", 1))
    return 1


def start(device: str | torch.device = "auto", devices: int | str | None = None,
          layout: ProcessLayout | None = None) -> Runtime:
    """This process's :class:`Runtime`, launching or joining the other processes the first time several are
    asked for. ``device``: the single-process device; ``layout``: the processes the run's settings ask for
    (default: one); ``devices`` overrides its ``devices`` (the CLI's ``--devices``)."""
    global _launched
    if _launched is not None:
        return _launched  # processes are launched once; later commands in this process join them
    layout = layout or ProcessLayout()
    accelerator = layout.accelerator
    devices = layout.devices if devices is None else devices
    num_nodes = int(layout.num_nodes or 1)
    external = launched_externally()
    if _device_count(devices, accelerator, device) * num_nodes <= 1 and external <= 1:
        return Runtime.local(device)
    _launched = _launch(accelerator, devices, num_nodes, layout.strategy, device, external)
    return _launched


def _launch(accelerator, devices, num_nodes: int, strategy: str, device: str | torch.device,
            external: int) -> Runtime:
    from lightning.fabric import Fabric

    if str(device) != "auto" and accelerator == "auto":
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
    atexit.register(_leave_process_group)
    log.info("rank %d of %d on %s", fabric.global_rank, fabric.world_size, fabric.device)
    return Runtime(fabric.world_size, fabric.global_rank, fabric.device, fabric)
