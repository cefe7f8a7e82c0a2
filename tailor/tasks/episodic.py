"""Episodic training: every optimisation step is one N-way K-shot episode, as in the Relation Network and
Prototypical Network papers.

A :class:`FewShotNet` turns items (images, or a frozen backbone's cached features) into embeddings and scores
queries against an episode's support set: relation scores in [0, 1] trained with MSE against one-hot targets
(Sung et al.), or negative squared distances to class prototypes trained with cross-entropy (Snell et al.).
"""

from __future__ import annotations

import math
from typing import Callable

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from tailor.data.episodes import EpisodeSampler
from tailor.evaluation.fewshot import prototype_logits
from tailor.models.fewshot_nets import RelationModule, relation_scores
from tailor.tasks.schedules import warmup_schedule

METHODS = ("relation", "protonet")


class FewShotNet(nn.Module):
    """``embed`` (items → embeddings or feature maps) and the method's way of scoring an episode.

    ``method``: "relation" (``head`` is a :class:`RelationModule`) or "protonet" (``head`` maps pooled
    features to the metric space; its logits are scaled negative squared distances, the scale learned).
    """

    def __init__(self, method: str, embed: nn.Module, head: nn.Module, scale: float = 1.0):
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"unknown few-shot method {method!r}: one of {METHODS}")
        if method == "relation" and not isinstance(head, RelationModule):
            raise TypeError("a Relation Network's head must be a RelationModule")
        self.method, self.embed, self.head = method, embed, head
        self.log_scale = nn.Parameter(torch.tensor(math.log(scale)), requires_grad=method == "protonet")

    def embed_items(self, items: torch.Tensor) -> torch.Tensor:
        maps = self.embed(items)
        if self.method == "relation":
            return maps
        pooled = maps.mean(dim=(-2, -1)) if maps.ndim == 4 else maps
        return self.head(pooled)

    def scores(self, support: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """Embedded ``support`` (n_way, k_shot, …) and ``query`` (M, …) → (M, n_way), higher is likelier."""
        if self.method == "relation":
            return relation_scores(self.head, support, query)
        return prototype_logits(support, query) * self.log_scale.exp()


class EpisodeDataset(Dataset):
    """``count`` episodes of ``sampler`` as ``(support, query)`` tensors of items ``item(row)``.

    ``epoch`` shifts the episode numbers, so each training epoch sees new episodes and a resumed run sees
    the episodes an unbroken one would.
    """

    def __init__(self, sampler: EpisodeSampler, item: Callable[[int], torch.Tensor], count: int):
        self.sampler, self.item, self.count = sampler, item, count
        self.epoch = 0

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= i < self.count:
            raise IndexError(f"episode {i} of {self.count}")
        episode = self.sampler.episode(self.epoch * self.count + i)
        n, k = episode.support.shape
        support = torch.stack([self.item(int(j)) for j in episode.support.reshape(-1)])
        query = torch.stack([self.item(int(j)) for j in episode.query.reshape(-1)])
        return support.view(n, k, *support.shape[1:]), query


class EpisodicTask(L.LightningModule):
    """Train a :class:`FewShotNet` one episode per step; validate on episodes of held-out data.

    ``lr``: Adam's learning rate (the papers used Adam at 1e-3 and halved it periodically; here a cosine
    schedule after a short warm-up).
    """

    def __init__(self, net: FewShotNet, lr: float = 1e-3, weight_decay: float = 0.0, warmup: float = 0.02):
        super().__init__()
        self.net, self.lr, self.weight_decay, self.warmup = net, lr, weight_decay, warmup

    def on_train_epoch_start(self) -> None:
        dataset = getattr(self.trainer.train_dataloader, "dataset", None)
        if isinstance(dataset, EpisodeDataset):
            dataset.epoch = self.current_epoch

    def _episode(self, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        support, query = batch
        n, k = support.shape[:2]
        embedded = self.net.embed_items(support.flatten(0, 1))
        scores = self.net.scores(embedded.view(n, k, *embedded.shape[1:]), self.net.embed_items(query))
        targets = torch.arange(n, device=scores.device).repeat_interleave(len(query) // n)
        if self.net.method == "relation":
            loss = F.mse_loss(scores, F.one_hot(targets, n).float())
        else:
            loss = F.cross_entropy(scores, targets)
        return loss, scores, targets

    def training_step(self, batch, batch_idx):
        loss, scores, targets = self._episode(batch)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=1)
        self.log("train/acc", (scores.argmax(1) == targets).float().mean(), on_step=True, on_epoch=False,
                 batch_size=1)
        return loss

    def validation_step(self, batch, batch_idx):
        loss, scores, targets = self._episode(batch)
        self.log("val/loss", loss, on_epoch=True, batch_size=1)
        self.log("val/acc", (scores.argmax(1) == targets).float().mean(), on_epoch=True, prog_bar=True, batch_size=1)

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        return {"optimizer": optimizer, "lr_scheduler": warmup_schedule(
            optimizer, self.trainer.estimated_stepping_batches, self.warmup)}
