"""Reading images safely: paths that stay inside the dataset root, decoding that never takes the process
down, and a fast parallel scan that finds missing or corrupt files before any training starts."""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Sequence, TypeVar

import torch

from tailor.data.decoding import (MAX_PIXELS, ImageError, ImageTooLarge, UnsafePathError, decode_rgb,  # noqa: F401
                                  open_image)

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class ImageProblem:
    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def resolve_under(root: str | Path, relative: str) -> Path:
    """``root / relative``, refusing absolute paths and any path (``..``, symlinks) that leaves ``root``."""
    if not relative or os.path.isabs(relative) or relative.startswith(("~", "\\")):
        raise UnsafePathError(f"image path {relative!r} must be relative to the dataset root {root}")
    root = Path(root).resolve()
    full = (root / relative).resolve()
    if full != root and root not in full.parents:
        raise UnsafePathError(f"image path {relative!r} leaves the dataset root {root}")
    return full


def decode_image(path: str | Path | BinaryIO, max_side: int | None = None, min_side: int | None = None,
                 max_pixels: int = MAX_PIXELS, name: str | None = None) -> torch.Tensor:
    """:func:`~tailor.data.decoding.decode_rgb` as the ``uint8`` tensor (3, H, W) the transforms take."""
    array = decode_rgb(path, max_side, min_side, max_pixels, name)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def _map_images(read: Callable[[str | Path], T], paths: Sequence[str | Path], workers: int, progress: bool,
                desc: str) -> tuple[list[T | None], list[ImageProblem]]:
    """``read`` over ``paths`` in a thread pool (PIL releases the GIL), in order; an :class:`ImageError`
    becomes ``None`` in the results and a problem in the list, never an exception."""
    def one(path):
        try:
            return read(path), None
        except ImageError as err:
            return None, ImageProblem(err.path, err.reason)

    values: list[T | None] = []
    problems: list[ImageProblem] = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results: Iterable = pool.map(one, paths)
        if progress:
            from tqdm.auto import tqdm
            results = tqdm(results, total=len(paths), desc=desc, unit="img", leave=False)
        for value, problem in results:
            values.append(value)
            if problem:
                problems.append(problem)
    return values, problems


def load_images(paths: Sequence[str | Path], max_side: int | None = None, workers: int = 4,
                progress: bool = False, desc: str = "decoding images", min_side: int | None = None
                ) -> tuple[list[torch.Tensor | None], list[ImageProblem]]:
    """Decode many images in parallel (as :func:`decode_image`); failures become problems, not exceptions."""
    return _map_images(lambda path: decode_image(path, max_side, min_side), paths, workers, progress, desc)


def scan_images(paths: Sequence[str | Path], workers: int = 4, progress: bool = False) -> list[ImageProblem]:
    """Find every missing, corrupt or oversized image, decoding each at a small draft size to stay fast."""
    return load_images(paths, max_side=64, workers=workers, progress=progress, desc="scanning images")[1]


def image_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` from the file's header alone (no pixel is decoded); missing, non-image and
    oversized files raise :class:`ImageError` as :func:`decode_image` would."""
    with open_image(path) as img:
        return img.size


def check_headers(paths: Sequence[str | Path], workers: int = 4, progress: bool = False
                  ) -> tuple[list[tuple[int, int] | None], list[ImageProblem]]:
    """Every image's size from its header, in parallel, with the problems of those that have none: the quick
    check a streaming dataset makes before work starts (a file corrupt past its header is found, reported and
    skipped by the worker that decodes it)."""
    return _map_images(image_size, paths, workers, progress, "checking images")
