"""``tailor similar``: the catalog products nearest to an image, from a metric-learning run's model and index."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from tailor import distributed
from tailor.data.images import decode_image
from tailor.data.transforms import DataConfig, eval_transform
from tailor.deploy.exported import OnnxModel
from tailor.inference import find_model_file
from tailor.models.embedding import EmbeddingNet, load_embedding_net
from tailor.runtime import autocast, prepare_model, to_device
from tailor.search.index import INDEX_FILE, EmbeddingIndex, Neighbour, SearchIndexError


class ProductSearch:
    """A run's embedding model and catalog index, ready for query images; the model and the index's
    embeddings sit on the run's device (:mod:`tailor.runtime`)."""

    def __init__(self, model: EmbeddingNet | OnnxModel, index: EmbeddingIndex):
        self.device = distributed.current().device
        self.model = prepare_model(model, self.device)
        self.exported = isinstance(model, OnnxModel)  # its graph averages the mirror image itself
        self.index = index.to(self.device)
        self.transform = eval_transform(DataConfig.from_timm(model.data_config, model.image_size))

    @classmethod
    def load(cls, run_dir: str | Path, exported: str | Path | None = None) -> "ProductSearch":
        """The run's model and index; ``exported``: an exported copy of the run's model to embed queries with
        instead (its embeddings must be those the index holds: export the same run)."""
        model_file = find_model_file(run_dir)
        index_file = model_file.parent / INDEX_FILE
        if not index_file.is_file():
            raise SearchIndexError(f"{index_file}: no catalog index; it is written when a metric-learning run "
                                   f"(configs/triplet.gin) evaluates on test data")
        if exported is None:
            return cls(load_embedding_net(model_file), EmbeddingIndex.load(index_file))
        model = OnnxModel(exported, device=distributed.current().device)
        if model.info.kind != "embedding":
            raise SearchIndexError(f"{exported}: a {model.info.kind} model; similar products need an exported "
                                   f"embedding model (tailor export on a configs/triplet.gin run)")
        return cls(model, EmbeddingIndex.load(index_file))

    @torch.inference_mode()
    def embed_batch(self, images: torch.Tensor) -> torch.Tensor:
        """Unit embeddings of a batch of transformed images (on the CPU), each averaged with its mirror
        image's, on the run's device: the one forward step of a served search (:mod:`tailor.serve`)."""
        x = to_device(images, self.device)
        if self.exported:
            return self.model(x).to(self.device)
        with autocast(self.device):
            both = self.model(x).float() + self.model(x.flip(-1)).float()
        return F.normalize(both, dim=-1)

    def embed(self, image: torch.Tensor) -> torch.Tensor:
        """The embedding of one decoded image (uint8, (3, H, W)), averaged with its mirror image's."""
        return self.embed_batch(self.transform(image)[None])[0]

    def similar(self, path: str | Path, k: int = 10) -> list[Neighbour]:
        """The ``k`` nearest catalog products to the image at ``path``; raises ImageError when unreadable."""
        return self.index.search(self.embed(decode_image(path, max_side=512))[None], k)[0]
