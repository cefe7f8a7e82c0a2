"""What this machine gives a process — cores, memory — and one setting of its C library that makes inference
fast here; no torch, so the lightest commands (an exported model's predictions) use them too.

glibc hands large freed buffers (a network's activations) back to the operating system after every forward
pass and then page-faults them in again on the next one. Keeping them in the process measured 2.2× faster
EfficientNet-Lite0 inference and about 1.5× faster training on a 2-core machine, for a few hundred MB more
resident memory.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def available_cores() -> int:
    """The cores this process may run on (a container's or a scheduler's limit, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


_kept = False


def keep_freed_memory_once() -> None:
    """:func:`keep_freed_memory`, the first time a process asks (the Python API's entry points call it, as the
    command does at its start)."""
    global _kept
    if not _kept:
        keep_freed_memory()
        _kept = True


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
