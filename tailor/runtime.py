"""Where models run, and process-wide settings that make them fast there: the one device policy every
model-running path honours (training goes through Lightning, which gets the same answer).

- ``runtime.device`` (gin) or ``--device`` (``predict``, ``enroll``, ``similar``): ``'auto'`` is the first CUDA
  GPU when there is one, else the CPU; ``'cpu'``, ``'cuda'`` and ``'cuda:1'`` name one.
- On a GPU, inference runs under autocast (bf16 where the card supports it, else fp16), in channels_last, from
  pinned memory with non-blocking copies. On the CPU it runs in fp32 and channels_last (1.7–2.3× faster than
  channels_first for EfficientNet-Lite here), with glibc told to keep freed memory (below).
- DataLoader workers: ``'auto'`` is the cores this process may use (decoding is a third of the work on
  full-size photos), 0 when there is nothing to decode (images already in memory).

glibc hands large freed buffers (a network's activations) back to the operating system after every forward
pass and then page-faults them in again on the next one. Keeping them in the process measured 2.2× faster
EfficientNet-Lite0 inference and about 1.5× faster training on a 2-core machine, for a few hundred MB more
resident memory.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os

import gin
import torch

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


class DeviceError(ValueError):
    """A device that does not exist on this machine, or a name that is not one."""


@gin.configurable("runtime")
def device_setting(device: str = "auto") -> str:
    """The ``runtime.device`` binding: 'auto', 'cpu', 'cuda' or 'cuda:N'."""
    return device


def resolve_device(name: str | torch.device | None = None) -> torch.device:
    """The device ``name`` means on this machine (``None``: the ``runtime.device`` binding).

    Asking for a GPU that is not there is an error, not a silent fallback to the CPU: a run meant for a GPU
    that quietly takes a day on the CPU is the worse outcome.
    """
    name = device_setting() if name is None else name
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


def available_cores() -> int:
    """The cores this process may run on (a container's or a scheduler's limit, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


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


def keep_freed_memory(trim_threshold: int = 2**31 - 1) -> bool:
    """Tell glibc's malloc not to use mmap for large blocks and not to trim the heap below ``trim_threshold``.

    The threshold is the largest ``mallopt`` accepts (an int): with a 1 GiB threshold, a batch of 64 at 224 px
    frees more than that at once and EfficientNet-Lite0 inference fell back from 91 to 61 img/s here.

    Returns False (and changes nothing) where the C library is not glibc.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold))
    log.debug("mallopt tuning %s", "applied" if ok else "refused")
    return ok


def available_memory() -> int:
    """Bytes of memory this machine can still give without swapping (Linux's MemAvailable; else the physical
    memory), for budgets such as keeping decoded images in memory."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30
