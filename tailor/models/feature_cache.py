"""Features computed once per (model, transform, image) and kept on disk.

kNN evaluation, t-SNE maps, similar-product search, prototypes and linear probes all start from the same
backbone features; a forward pass is the expensive part, so it is done once per image. An image is known by
its resolved path, size and modification time: replacing a file invalidates its entry, nothing else does.
The cache lives in ``$TAILOR_CACHE`` (default ``~/.cache/tailor``); deleting it is always safe.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import torch
from torch import nn

from tailor.distributed import Runtime
from tailor.data.datasets import ImageDataset
from tailor.models.features import extract_features
from tailor.models.files import ModelFileError, load_model_file, save_model_file

log = logging.getLogger(__name__)


def cache_root() -> Path:
    return Path(os.environ.get("TAILOR_CACHE", Path.home() / ".cache" / "tailor"))


def model_fingerprint(model: nn.Module) -> str:
    """A short hash of a model's weights: a trained backbone gets its own cache entries."""
    digest = hashlib.sha1()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def image_key(path: Path) -> str:
    stat = path.stat()
    return f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"


class FeatureCache:
    """Backbone features of images, ``(views, N, D)``, for one model and one transform.

    ``model_key`` names the weights (e.g. ``"efficientnet_lite0:imagenet"``, or :func:`model_fingerprint`);
    ``flip`` adds the mirror image as a second view.
    """

    def __init__(self, model: nn.Module, model_key: str, transform_key: str, flip: bool = True,
                 root: Path | None = None):
        self.model, self.flip = model, flip
        name = hashlib.sha1(f"{model_key}|{transform_key}|flip={flip}".encode()).hexdigest()[:20]
        self.path = (root or cache_root()) / "features" / f"{name}.pt"
        self._keys: list[str] = []
        self._features: torch.Tensor | None = None
        if self.path.is_file():
            try:
                saved = load_model_file(self.path)
                self._keys, self._features = list(saved["keys"]), saved["features"]
            except (ModelFileError, KeyError) as err:
                log.warning("ignoring an unreadable feature cache %s (%s)", self.path, err)

    def features(self, dataset: ImageDataset, batch_size: int = 64, progress: bool = True,
                 desc: str = "features", *, runtime: Runtime | None = None) -> torch.Tensor:
        """The features of every row of ``dataset``, in order: cached ones are read, the rest computed and
        added to the cache. Rows whose image cannot be decoded are dropped from ``dataset``.

        Under several processes, rank 0's cache decides what is computed, every rank computes a share, and
        rank 0 alone writes the cache file; every rank gets the same features back.
        """
        ranks = runtime or Runtime.local()
        keys = [image_key(p) for p in dataset.paths]
        position = {k: i for i, k in enumerate(self._keys)}
        missing: dict[str, int] = {}  # key → first row with it (the same image twice is computed once)
        for i, key in enumerate(keys):
            if key not in position:
                missing.setdefault(key, i)
        missing = ranks.broadcast(missing)
        if missing:
            if ranks.is_zero:
                log.info("computing features of %d image(s); %d cached", len(missing), len(keys) - len(missing))
            subset = dataset.subset(list(missing.values()))
            new = extract_features(self.model, subset, batch_size=batch_size, flip=self.flip, progress=progress,
                                   desc=desc, runtime=ranks)
            missing_keys = list(missing)
            computed = [missing_keys[i] for i in subset.source_rows]  # the readable ones, in order
            if ranks.is_zero:
                self._append(computed, new)
            unreadable = set(missing) - set(computed)
            if unreadable:
                rows = [i for i, k in enumerate(keys) if k not in unreadable]
                dataset.keep_rows(rows)
                keys = [keys[i] for i in rows]
        features = None
        if ranks.is_zero:
            position = {k: i for i, k in enumerate(self._keys)}
            features = self._features[:, [position[k] for k in keys]].float()
        return ranks.broadcast(features)

    def _append(self, keys: list[str], features: torch.Tensor) -> None:
        self._keys += keys
        self._features = features if self._features is None else torch.cat([self._features, features], dim=1)
        save_model_file(self.path, {"keys": self._keys, "features": self._features})
