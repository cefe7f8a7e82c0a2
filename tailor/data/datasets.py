"""Turn a catalog table into tensors.

:class:`FashionDataset` keeps the seed's name and binding names (``FashionDataset.root_dir``,
``FashionDataset.csv_file``). Images are checked before any training starts — missing, corrupt and
escaping paths are reported by path. Decoded images are kept in memory when they fit a budget (decoding a JPEG
costs more than the augmentation that follows, and epochs repeat it); otherwise the dataset streams: DataLoader
workers decode each image when it is needed, and memory grows with batch × workers, not with the catalog.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from tailor.data.catalog import Catalog, CatalogError, read_catalog
from tailor.data.images import ImageError, UnsafePathError, check_headers, decode_image, load_images, resolve_under
from tailor.paths import SAMPLE_ROOT
from tailor.machine import available_memory

log = logging.getLogger(__name__)

UNKNOWN = -1  # the label index of a row whose class the model does not know
SPLIT_FILES = {"train_top20.csv", "train_other.csv", "train.csv", "test.csv"}  # written by `tailor splits`


class ImageDataset(Dataset):
    """Rows of a table (``image``, ``label``) under ``root``; yields ``(transform(image), class index)``.

    ``images`` holds decoded uint8 tensors when the dataset is kept in memory; ``None`` decodes on demand.
    Subsets and copies with another transform share that memory.
    """

    def __init__(self, root: str | Path, frame: pd.DataFrame, classes: Sequence[str],
                 transform: Callable | None = None, images: list[torch.Tensor] | None = None,
                 max_side: int | None = None, min_side: int | None = None):
        self.root = Path(root)
        self.frame = frame.reset_index(drop=True)
        self.classes = list(classes)
        self.transform = transform
        self.images = images
        self.max_side, self.min_side = max_side, min_side
        index = {c: i for i, c in enumerate(self.classes)}
        self.targets = np.array([index.get(label, UNKNOWN) for label in self.frame["label"]], dtype=np.int64)
        self.paths = [resolve_under(self.root, p) for p in self.frame["image"]]
        # each row's position when this dataset was made: arrays kept beside it (targets of another kind,
        # copies with another transform) follow the rows :meth:`keep_rows` leaves
        self.source_rows = np.arange(len(self.frame))

    def __len__(self) -> int:
        return len(self.frame)

    def image(self, i: int) -> torch.Tensor:
        if self.images is not None:
            return self.images[i]
        return decode_image(self.paths[i], self.max_side, self.min_side)

    def __getitem__(self, i: int):
        image = self.image(i)
        return (self.transform(image) if self.transform else image), int(self.targets[i])

    def keep_rows(self, rows: Sequence[int] | np.ndarray) -> None:
        """Keep only ``rows`` (in this order), in place: a streaming pass that met unreadable images drops them
        here, so every later use of this dataset sees labels that match the features computed."""
        rows = list(rows)
        self.frame = self.frame.iloc[rows].reset_index(drop=True)
        self.targets = self.targets[rows]
        self.paths = [self.paths[i] for i in rows]
        self.source_rows = self.source_rows[rows]
        if self.images is not None:
            self.images = [self.images[i] for i in rows]

    def subset(self, rows: Sequence[int] | np.ndarray) -> "ImageDataset":
        rows = list(rows)
        images = [self.images[i] for i in rows] if self.images is not None else None
        return ImageDataset(self.root, self.frame.iloc[rows], self.classes, self.transform, images, self.max_side, self.min_side)

    def with_transform(self, transform: Callable | None) -> "ImageDataset":
        return ImageDataset(self.root, self.frame, self.classes, transform, self.images, self.max_side, self.min_side)

    def with_classes(self, classes: Sequence[str]) -> "ImageDataset":
        return ImageDataset(self.root, self.frame, classes, self.transform, self.images, self.max_side, self.min_side)

    def class_counts(self) -> dict[str, int]:
        return self.frame["label"].value_counts().to_dict()


def streams(dataset) -> bool:
    """Whether ``dataset`` (or the dataset it wraps) reads its images from files when asked
    for an item, so that DataLoader workers should decode them, rather than from memory."""
    while dataset is not None:
        if hasattr(dataset, "paths"):
            return getattr(dataset, "images", None) is None
        inner = getattr(dataset, "dataset", None)
        if inner is None and isinstance(getattr(dataset, "images", None), Dataset):
            inner = dataset.images  # an AttributeDataset's images
        dataset = inner
    return False


class FashionDataset:
    """Where the data is: a dataset root and a table (Kaggle ``styles.csv`` split, ``image,label`` CSV, or an
    ImageFolder tree). Call :meth:`load` to read, check and (optionally) decode it.

    ``label_column`` picks the attribute to classify (``articleType`` by default for Kaggle tables).
    ``skip_bad_images``: drop missing or corrupt images with a report (True) or stop with one (False).
    ``in_memory``: True keeps decoded images in memory (fast epochs), False streams them (decoded by DataLoader
    workers when needed: huge catalogs), ``'auto'`` keeps them when their estimated size fits
    ``memory_budget`` (a fraction of the memory available, or bytes when above 1), else streams.
    ``max_side``: decode images no larger than this many pixels on the longer side; ``min_side``: JPEG
    decoding may stop at a reduced scale as long as the shorter side keeps this many pixels (set it to the
    model's input size; ``None``: ``max_side``). The same rule decodes in memory and streaming, so a run gives
    the same results whichever its memory budget chooses.
    ``workers``: threads that decode a dataset kept in memory, and check a streamed one's files.
    """

    def __init__(self, root_dir: str | Path = SAMPLE_ROOT, csv_file: str | Path | None = None,
                 label_column: str | None = None, skip_bad_images: bool = True, in_memory: bool | str = "auto",
                 max_side: int | None = 320, workers: int = 4, memory_budget: float = 0.25,
                 min_side: int | None = 224):
        self.root_dir = Path(root_dir)
        self.csv_file = Path(csv_file) if csv_file else None
        self.label_column = label_column
        self.skip_bad_images = skip_bad_images
        if in_memory not in (True, False, "auto"):
            raise ValueError(f"FashionDataset.in_memory must be True, False or 'auto', got {in_memory!r}")
        self.in_memory = in_memory
        self.max_side, self.min_side = max_side, min_side
        self.workers = workers
        self.memory_budget = memory_budget

    def catalog(self) -> Catalog:
        source = self.csv_file or self.root_dir
        if not Path(source).exists():
            hint = ("make the splits first: tailor splits data/styles.csv experiments/splits --images data/sample/images"
                    if Path(source).name in SPLIT_FILES else "set FashionDataset.csv_file / root_dir")
            raise CatalogError(f"{source}: no such file or folder ({hint})")
        catalog = read_catalog(source, self.label_column)
        if catalog.frame.empty:
            raise CatalogError(f"{source}: no rows to use")
        return catalog

    def load(self, classes: Sequence[str] | None = None, transform: Callable | None = None,
             frame: pd.DataFrame | None = None, progress: bool = True) -> ImageDataset:
        """Read the table (or use ``frame``), refuse unsafe paths, find bad images, and build the dataset."""
        if frame is None:
            frame = self.catalog().frame
        if frame.empty:
            raise CatalogError(f"{self.csv_file or self.root_dir}: no rows to use")
        root = self.root_dir
        paths = []
        for line, rel in zip(frame.get("line", range(2, len(frame) + 2)), frame["image"]):
            try:
                paths.append(resolve_under(root, rel))
            except UnsafePathError as err:
                raise UnsafePathError(f"{self.csv_file} line {line}: {err}") from None
        if self.keeps_in_memory(paths):
            images, problems = load_images(paths, self.max_side, self.workers, progress=progress, min_side=self.min_side)
        else:
            images, problems = None, check_headers(paths, self.workers, progress=progress)[1]
        if problems:
            listing = "\n  ".join(str(p) for p in problems[:20])
            more = f"\n  … and {len(problems) - 20} more" if len(problems) > 20 else ""
            if not self.skip_bad_images:
                raise ImageError(problems[0].path, f"{len(problems)} unreadable image(s):\n  {listing}{more}")
            log.warning("skipping %d unreadable image(s) of %d:\n  %s%s", len(problems), len(paths), listing, more)
        bad = {p.path for p in problems}
        keep = [i for i, p in enumerate(paths) if str(p) not in bad]
        if not keep:
            raise ImageError(root, "no readable images")
        frame = frame.iloc[keep]
        if images is not None:
            images = [images[i] for i in keep]
        if classes is None:
            classes = sorted(frame["label"].unique())
        return ImageDataset(root, frame, classes, transform, images, self.max_side, self.min_side)

    def keeps_in_memory(self, paths: Sequence[Path], sample: int = 64) -> bool:
        """Whether to decode ``paths`` into memory: ``in_memory`` when it is True or False; for ``'auto'``,
        whether the decoded size (estimated from the headers of a seeded sample of the files) fits the
        budget. The choice is logged."""
        if self.in_memory != "auto":
            return bool(self.in_memory)
        rng = np.random.default_rng(0)
        picked = rng.choice(len(paths), size=min(sample, len(paths)), replace=False)
        sizes = [s for s in check_headers([paths[i] for i in picked], self.workers)[0] if s is not None]
        per_image = np.mean([self._decoded_bytes(*s) for s in sizes]) if sizes else 0.0
        needed = per_image * len(paths)
        budget = self.memory_budget if self.memory_budget > 1 else self.memory_budget * available_memory()
        keep = needed <= budget
        log.info("%s %d images: about %.2f GB decoded, budget %.2f GB (FashionDataset.memory_budget)",
                 "keeping in memory" if keep else "streaming", len(paths), needed / 1e9, budget / 1e9)
        return keep

    def _decoded_bytes(self, width: int, height: int) -> float:
        """At most this many bytes (JPEG draft decoding at ``min_side`` can give less)."""
        scale = min(1.0, self.max_side / max(width, height)) if self.max_side else 1.0
        return 3.0 * round(width * scale) * round(height * scale)


@dataclass(frozen=True)
class RunData:
    """The tables a run is given, resolved by the front-end (:mod:`tailor.run_inputs`): ``train`` (the training
    table; in an evaluate-mode run, the table scored) and ``test`` (None: no test evaluation)."""

    train: FashionDataset
    test: FashionDataset | None = None


def top_classes(spec: FashionDataset) -> set[str] | None:
    """The N most frequent categories, from ``top_classes.txt`` beside the spec's CSV (written by
    `tailor splits`); ``None`` when there is no such file."""
    top_file = Path(spec.csv_file).parent / "top_classes.txt" if spec.csv_file else None
    if top_file is None or not top_file.is_file():
        return None
    return set(top_file.read_text().split("\n")) - {""}
