"""The one loop that runs a model over a dataset: frozen-backbone features (linear probes, kNN, prototypes,
episodes, the search index), evaluation scores and predictions all go through :func:`run_pass`.

It honours the device policy (:mod:`tailor.runtime`): images are decoded and transformed in DataLoader
workers when they are not in memory, copied to the device from pinned memory, run under autocast on a GPU;
across several processes each rank computes its share of the rows and every rank gets all of them back in
dataset order (:mod:`tailor.distributed`). An image a worker cannot decode is reported by path and its row
left out, never fatal to the pass.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from tailor.distributed import Runtime
from tailor.data.datasets import streams
from tailor.data.images import ImageError, ImageProblem
from tailor.machine import available_cores
from tailor.runtime import autocast, prepare_model, to_device, worker_count

log = logging.getLogger(__name__)

Outputs = torch.Tensor | dict[str, torch.Tensor]


class _Rows(Dataset):
    """The items of a dataset with their row numbers; an unreadable image becomes a problem, not an exception
    (raised in a worker process, an exception would end the whole pass).

    With ``threads``, a batch's items are decoded by that many threads of this process (PIL and torch release
    the GIL): on a CPU, where the forward pass already keeps every core busy, decoding between batches in
    threads is as fast as decoding everything first, without worker processes competing with the forward.
    """

    def __init__(self, dataset: Dataset, threads: int = 0):
        self.dataset = dataset
        self.threads = threads
        self._pool: ThreadPoolExecutor | None = None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        try:
            return i, self.dataset[i][0], None
        except ImageError as err:
            return i, None, ImageProblem(err.path, err.reason)

    def __getitems__(self, rows: list[int]) -> list:
        """A batch's items (the DataLoader's batched fetch), decoded in threads when there are several."""
        if self.threads < 2 or len(rows) < 2:
            return [self[i] for i in rows]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="tailor-decode")
        return list(self._pool.map(self.__getitem__, rows))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


def _collate(items):
    good = [(i, x) for i, x, problem in items if problem is None]
    problems = [problem for _, _, problem in items if problem is not None]
    rows = torch.tensor([i for i, _ in good], dtype=torch.long)
    images = torch.stack([x for _, x in good]) if good else None
    return rows, images, problems


@dataclass
class PassResult:
    """What a pass computed: ``outputs`` for ``rows`` (ascending), and the rows it could not read."""

    outputs: Outputs
    rows: np.ndarray
    problems: list[ImageProblem] = field(default_factory=list)


def image_loader(dataset: Dataset, batch_size: int = 64, num_workers: int | str = "auto",
                 sampler=None, device: torch.device | None = None) -> DataLoader:
    """Batches ``(rows, images, problems)`` of ``dataset`` in order, pinned for a GPU.

    A streamed dataset is decoded in worker processes (:func:`tailor.runtime.worker_count`), or, with none,
    by one thread per core of this process (a single batch always is: sooner than a worker starts)."""
    decodes = streams(dataset)
    workers = worker_count(num_workers, decodes, device) if len(dataset) > batch_size else 0
    threads = available_cores() if decodes and not workers else 0
    # its own generator: a loader draws a seed from the global one, which would shift a later weight init
    return DataLoader(_Rows(dataset, threads), batch_size=batch_size, shuffle=False, sampler=sampler,
                      num_workers=workers,
                      collate_fn=_collate, pin_memory=device is not None and device.type == "cuda",
                      prefetch_factor=4 if workers else None, generator=torch.Generator())


@torch.inference_mode()
def run_pass(fn: Callable[[torch.Tensor], Outputs], dataset: Dataset, batch_size: int = 64, progress: bool = True,
             desc: str = "batches", num_workers: int | str = "auto", *,
             runtime: Runtime | None = None) -> PassResult:
    """``fn`` (a batch of images on the device → a tensor, or a dict of tensors, one row per image) over every
    item of ``dataset`` (which yields ``(image, label)``), split across ``runtime``'s ranks (default: one
    process on the first GPU, else the CPU), gathered in dataset order.

    A collective under several processes: every rank must call it with the same dataset.
    """
    ranks = runtime or Runtime.local()
    loader = batches = image_loader(dataset, batch_size, num_workers, ranks.sampler(len(dataset)), ranks.device)
    if progress and ranks.is_zero:
        from tqdm.auto import tqdm
        loader = tqdm(loader, desc=desc, unit="batch", leave=False)
    chunks: list[Outputs] = []
    rows: list[torch.Tensor] = []
    problems: list[ImageProblem] = []
    fetched = _ahead(loader)
    try:
        for batch_rows, images, batch_problems in fetched:
            problems += batch_problems
            if images is None:
                continue
            with autocast(ranks.device):
                out = fn(to_device(images, ranks.device))
            chunks.append({k: v.float().cpu() for k, v in out.items()} if isinstance(out, dict)
                          else out.float().cpu())
            rows.append(batch_rows)
    finally:  # a failing pass stops its fetching first, then its decoding threads
        fetched.close()
        batches.dataset.close()
    rows_all = torch.cat(rows) if rows else torch.zeros(0, dtype=torch.long)
    outputs = _gather(ranks, chunks, rows_all)
    problems = [p for part in ranks.gather_objects(problems) for p in part]
    if problems and ranks.is_zero:
        listing = "\n  ".join(str(p) for p in problems[:20])
        log.warning("%s: skipped %d unreadable image(s):\n  %s", desc, len(problems), listing)
    kept = _gather_rows(ranks, rows_all)
    return PassResult(outputs, kept, problems)


def _ahead(batches):
    """``batches``, each fetched while the caller works on the one before (in a background thread)."""
    with ThreadPoolExecutor(1, thread_name_prefix="tailor-fetch") as pool:
        it = iter(batches)
        upcoming = pool.submit(next, it, None)
        while (batch := upcoming.result()) is not None:
            upcoming = pool.submit(next, it, None)
            yield batch


def _gather(ranks: Runtime, chunks: list[Outputs], rows: torch.Tensor) -> Outputs:
    if chunks and isinstance(chunks[0], dict):
        return {k: ranks.gather(torch.cat([c[k] for c in chunks]), rows)[0] for k in chunks[0]}
    if not chunks:  # nothing readable on this rank: an empty tensor still joins the collective
        return ranks.gather(torch.zeros(0), rows)[0]
    return ranks.gather(torch.cat(chunks), rows)[0]


def _gather_rows(ranks: Runtime, rows: torch.Tensor) -> np.ndarray:
    return np.unique(np.concatenate([np.asarray(r) for r in ranks.gather_objects(rows.numpy())]))


def run_model(model: nn.Module, fn: Callable[[torch.Tensor], Outputs], dataset: Dataset, batch_size: int = 64,
              progress: bool = True, desc: str = "batches", num_workers: int | str = "auto", *,
              runtime: Runtime | None = None) -> Outputs:
    """:func:`run_pass` of ``fn`` with ``model`` ready on ``runtime``'s device (eval mode, channels_last, its
    train/eval mode put back after), and the rows the pass could not read dropped from ``dataset``."""
    runtime = runtime or Runtime.local()
    was_training = model.training
    prepare_model(model, runtime.device)
    try:
        result = run_pass(fn, dataset, batch_size, progress, desc, num_workers, runtime=runtime)
    finally:
        model.train(was_training)
    keep_rows(dataset, result)
    return result.outputs


def extract_features(backbone: nn.Module, dataset: Dataset, batch_size: int = 64, flip: bool = True,
                     progress: bool = True, desc: str = "features", num_workers: int | str = "auto", *,
                     runtime: Runtime | None = None) -> torch.Tensor:
    """Pooled features of every item of ``dataset`` (which yields ``(image, label)``), in order, on the CPU.

    With ``flip``, returns ``(2, N, D)``: the images and their mirror images; else ``(1, N, D)``. Rows whose
    image a worker could not decode are dropped from ``dataset`` itself (:meth:`ImageDataset.keep_rows`), so
    its labels keep matching the features.
    """
    def views(images: torch.Tensor) -> torch.Tensor:
        out = [backbone(images)]
        if flip:
            out.append(backbone(images.flip(-1)))
        return torch.stack(out, dim=1)  # (B, V, D): batch first, so rows gather across ranks

    features = run_model(backbone, views, dataset, batch_size, progress, desc, num_workers, runtime=runtime)
    if features.numel() == 0:
        return torch.zeros((2 if flip else 1, 0, 0))
    return features.permute(1, 0, *range(2, features.dim())).contiguous()


def keep_rows(dataset: Dataset, result: PassResult) -> None:
    """Drop from ``dataset`` the rows a pass could not read, so its table matches the pass's outputs."""
    if len(result.rows) != len(dataset):
        if not hasattr(dataset, "keep_rows"):
            raise ImageError(result.problems[0].path, result.problems[0].reason)
        dataset.keep_rows(result.rows)
