"""Reading images safely: paths that stay inside the dataset root, decoding that never takes the process
down, and a fast parallel scan that finds missing or corrupt files before any training starts."""

from __future__ import annotations

import contextlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator, Sequence, TypeVar

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Images above this many pixels are refused (decompression bombs); product photos are far smaller.
MAX_PIXELS = 64_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


class UnsafePathError(ValueError):
    """A path from a table that would leave the dataset root."""


class ImageError(RuntimeError):
    """An image that cannot be read, with the path and the reason."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


class ImageTooLarge(ImageError):
    """An image with more pixels than allowed (a decompression bomb), refused before it is decoded."""


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


@contextlib.contextmanager
def open_image(path: str | Path | BinaryIO, max_pixels: int = MAX_PIXELS, name: str | None = None
               ) -> Iterator[Image.Image]:
    """``Image.open`` with the size checked before any pixel is decoded, and every failure inside the block
    (missing file, decompression bomb, the many errors PIL raises for corrupt data) turned into an
    :class:`ImageError` naming the path (or ``name``, for an image in memory) and the reason."""
    where = name or path
    try:
        with Image.open(path) as img:
            if img.width * img.height > max_pixels:  # checked before decoding: PIL itself only warns below 2×
                raise ImageTooLarge(where, f"{img.width}×{img.height} is larger than {max_pixels:,} pixels "
                                           f"(refused as a decompression bomb)")
            yield img
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(where, "file not found") from None
    except Image.DecompressionBombError:
        raise ImageTooLarge(where, f"larger than {max_pixels:,} pixels (refused as a decompression bomb)") from None
    except UnidentifiedImageError:
        raise ImageError(where, "cannot be decoded (not an image of a known format: JPEG, PNG, WebP, GIF, BMP, "
                                "TIFF…)") from None
    except Exception as err:  # PIL raises many types for corrupt data
        raise ImageError(where, f"cannot be decoded ({type(err).__name__}: {err})") from None


def decode_image(path: str | Path | BinaryIO, max_side: int | None = None, min_side: int | None = None,
                 max_pixels: int = MAX_PIXELS, name: str | None = None) -> torch.Tensor:
    """Decode any common image to an RGB ``uint8`` tensor (3, H, W).

    Grayscale, palette, CMYK, 16-bit and transparent images are converted (transparency onto white, the
    catalog's background). With ``max_side``, the image is shrunk so its longer side is at most that.
    A JPEG is decoded at reduced scale (draft mode: 1/2, 1/4 or 1/8, the DCT skipping what it would throw
    away), the smallest that keeps both sides at least ``min_side`` (``max_side`` when not given). With
    ``min_side`` at the model's input size, a 1800×2400 photo decodes at 1/8 (225×300) in a third of the time
    1/4 takes, and still covers a 224-px input. ``path`` may be an open binary file (an upload); errors then
    name ``name``.
    """
    with open_image(path, max_pixels, name) as img:
        if max_side and img.format == "JPEG":
            floor = min(min_side or max_side, max_side)
            img.draft("RGB", (floor, floor))
        img.load()
        img = ImageOps.exif_transpose(img)
        rgb = _to_rgb(img)
    if max_side and max(rgb.size) > max_side:
        scale = max_side / max(rgb.size)
        rgb = rgb.resize((max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale))),
                         Image.BILINEAR, reducing_gap=2.0)
    array = np.asarray(rgb, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(img, dtype=np.float64)
        top = array.max() or 1.0
        img = Image.fromarray((array * (255.0 / top)).astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


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
