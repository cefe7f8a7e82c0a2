"""Where models run, and process-wide settings that make them fast there: the one device policy every
model-running path honours (training goes through Lightning, which gets the same answer).

- ``runtime.device`` (bound at the edge: :func:`tailor.run_inputs.device_setting`) or ``--device``
  (``predict``, ``enroll``, ``similar``): ``'auto'`` is the first CUDA
  GPU when there is one, else the CPU; ``'cpu'``, ``'cuda'`` and ``'cuda:1'`` name one.
- On a GPU, inference runs under autocast (bf16 where the card supports it, else fp16), in channels_last, from
  pinned memory with non-blocking copies. On the CPU it runs in fp32 and channels_last (1.7–2.3× faster than
  channels_first for EfficientNet-Lite here), with glibc told to keep freed memory (:mod:`tailor.machine`).
- DataLoader workers: ``'auto'`` is the cores this process may use (decoding is a third of the work on
  full-size photos), 0 when there is nothing to decode (images already in memory).
"""

from __future__ import annotations

import contextlib
import logging

import torch

from tailor.machine import available_cores

log = logging.getLogger(__name__)

class DeviceError(ValueError):
    """A device that does not exist on this machine, or a name that is not one."""


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """The device ``name`` means on this machine (``None`` or ``'auto'``: the first CUDA GPU when there is
    one, else the CPU).

    Asking for a GPU that is not there is an error, not a silent fallback to the CPU: a run meant for a GPU
    that quietly takes a day on the CPU is the worse outcome.
    """
    name = "auto" if name is None else name
    if isinstance(name, torch.device):
        return name
    text = str(name).strip().lower()
    if text == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise DeviceError(f"unknown device {name!r}: 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {name!r} asked for, but this machine has no usable CUDA GPU "
                              f"(use 'auto' or 'cpu')")
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            raise DeviceError(f"device {name!r} asked for, but this machine has {torch.cuda.device_count()} GPU(s)")
        return torch.device("cuda", index)
    if device.type != "cpu":
        raise DeviceError(f"unsupported device {name!r}: 'auto', 'cpu', 'cuda' or 'cuda:N'")
    return device


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Mixed precision for inference on a GPU (bf16 where supported, else fp16); nothing on the CPU, where
    fp32 is both exact and, for these networks, as fast."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def to_device(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch of images on ``device`` in channels_last (a non-blocking copy from pinned memory on a GPU)."""
    if batch.dim() == 4:
        batch = batch.contiguous(memory_format=torch.channels_last)
    return batch.to(device, non_blocking=device.type == "cuda")


def prepare_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` in eval mode on ``device``, in channels_last. An exported model (not a torch module) runs in
    ONNX Runtime, which placed it when it was loaded: it is returned as it is."""
    if not isinstance(model, torch.nn.Module):
        return model
    return model.eval().to(device=device, memory_format=torch.channels_last)


def worker_count(setting: int | str, decodes: bool = True, device: torch.device | None = None) -> int:
    """DataLoader worker processes for ``setting``: a number as given; ``'auto'``: 0 when the items are in
    memory (an item costs less than sending it between processes); when they must be decoded from files, the
    available cores, except for a pass whose model runs on the CPU (``device``), which decodes in threads
    between batches instead: there the forward pass keeps every core busy, and worker processes decoding
    beside it only compete with it (measured in ``bench/scale.py``)."""
    if setting == "auto":
        on_cpu = device is not None and device.type == "cpu"
        return available_cores() if decodes and not on_cpu else 0
    try:
        count = int(setting)
    except (TypeError, ValueError):
        raise ValueError(f"num_workers must be a number or 'auto', got {setting!r}") from None
    if count < 0:
        raise ValueError(f"num_workers must be 0 or more, got {count}")
    return count
