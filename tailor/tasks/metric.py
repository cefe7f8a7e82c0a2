"""What one training step of an embedding is: a pytorch-metric-learning loss over mined triplets, with
validation by kNN accuracy of held-out images against the training images.

Miners: "random" (the seed: for each anchor a random positive and a random negative), "semihard" and
"hard" (the seed's "possible improvement": negatives inside the margin, or violating it), "all" (every
triplet that still has a loss) or "none" (the loss sees every triplet of the batch).
"""

from __future__ import annotations

from typing import Callable

import lightning as L
import numpy as np
import torch
from pytorch_metric_learning import distances, losses, miners
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu
from torch import nn

from tailor.evaluation.knn import knn_scores
from tailor.tasks.schedules import warmup_schedule

MINERS = ("random", "semihard", "hard", "all", "none")
LOSSES = ("triplet", "multi_similarity", "contrastive")


class RandomTripletMiner(miners.BaseMiner):
    """The seed's sampling: ``per_anchor`` random (positive, negative) pairs for every anchor of the batch."""

    def __init__(self, per_anchor: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.per_anchor = per_anchor

    def mine(self, embeddings, labels, ref_emb, ref_labels):
        return lmu.get_random_triplet_indices(labels, ref_labels=ref_labels, t_per_anchor=self.per_anchor)


def l2_distance() -> distances.LpDistance:
    """The seed's d(x, y): the L2 distance between unit-length embeddings."""
    return distances.LpDistance(normalize_embeddings=True, p=2)


def make_miner(name: str, margin: float) -> miners.BaseMiner | None:
    if name not in MINERS:
        raise ValueError(f"unknown miner {name!r}: one of {MINERS}")
    if name == "none":
        return None
    if name == "random":
        return RandomTripletMiner()
    return miners.TripletMarginMiner(margin=margin, type_of_triplets=name, distance=l2_distance())


def make_loss(name: str, margin: float) -> nn.Module:
    if name == "triplet":  # L(a, p, n) = max(d(a, p) − d(a, n) + margin, 0)
        return losses.TripletMarginLoss(margin=margin, distance=l2_distance())
    if name == "multi_similarity":
        return losses.MultiSimilarityLoss()
    if name == "contrastive":
        return losses.ContrastiveLoss(pos_margin=0.0, neg_margin=margin, distance=l2_distance())
    raise ValueError(f"unknown metric loss {name!r}: one of {LOSSES}")


class MetricTask(L.LightningModule):
    """Train ``embedder`` (images or cached features → unit embeddings) with ``loss`` on ``miner``'s triplets.

    Validation takes two dataloaders: the reference rows (index 0) and the held-out queries (index 1); it
    logs ``val/knn_acc`` (accuracy) and ``val/knn_balanced_acc`` (mean per-class recall) of kNN with ``k``.
    ``optimizer``: any ``torch.optim`` class, configured from gin; a warm-up then a cosine schedule.
    ``freeze_bn``: keep the backbone's batch-norm statistics as pretrained when it trains.
    """

    def __init__(self, embedder: nn.Module, num_classes: int, loss: str = "triplet", miner: str = "hard",
                 margin: float = 0.2, k: int = 5, optimizer: Callable = torch.optim.AdamW, lr: float = 1e-3,
                 weight_decay: float = 1e-4, warmup: float = 0.05, freeze_bn: bool = False):
        super().__init__()
        self.embedder = embedder
        self.num_classes = num_classes
        self.loss_name, self.miner_name, self.margin = loss, miner, margin
        self.loss_fn = make_loss(loss, margin)
        self.miner = make_miner(miner, margin)
        self.k = k
        self.optimizer_class, self.lr, self.weight_decay, self.warmup = optimizer, lr, weight_decay, warmup
        self.freeze_bn = freeze_bn
        self._val: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {0: [], 1: []}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.embedder(x)

    def on_train_batch_start(self, batch, batch_idx) -> None:
        if self.freeze_bn:  # every batch: Lightning puts the module back in train mode after validation
            backbone = getattr(self.embedder, "backbone", None)
            for module in backbone.modules() if backbone is not None else ():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()

    def training_step(self, batch, batch_idx):
        x, targets = batch
        embeddings = self(x)
        triplets = self.miner(embeddings, targets) if self.miner is not None else None
        loss = self.loss_fn(embeddings, targets, triplets)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=len(targets))
        if triplets is not None and len(triplets) == 3:
            self.log("train/triplets", float(len(triplets[0])), on_step=True, on_epoch=False, batch_size=len(targets))
        return loss

    def validation_step(self, batch, batch_idx, dataloader_idx: int = 0):
        x, targets = batch
        self._val[dataloader_idx].append((self(x).float().cpu(), targets.cpu()))

    def on_validation_epoch_end(self) -> None:
        if not self._val[0] or not self._val[1]:
            self._val = {0: [], 1: []}
            return
        reference, reference_targets = (torch.cat(t) for t in zip(*self._val[0]))
        queries, query_targets = (torch.cat(t) for t in zip(*self._val[1]))
        self._val = {0: [], 1: []}
        scores = knn_scores(reference, reference_targets.numpy(), queries, self.num_classes, k=self.k)
        predicted = scores.argmax(1)
        truth = query_targets.numpy()
        hits = predicted == truth
        recalls = [hits[truth == c].mean() for c in np.unique(truth)]
        self.log("val/knn_acc", float(hits.mean()), prog_bar=True)
        self.log("val/knn_balanced_acc", float(np.mean(recalls)), prog_bar=False)

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = self.optimizer_class(params, lr=self.lr, weight_decay=self.weight_decay)
        return {"optimizer": optimizer, "lr_scheduler": warmup_schedule(
            optimizer, self.trainer.estimated_stepping_batches, self.warmup)}
