"""One training step of a multi-attribute model: a cross-entropy per head, summed with weights.

A product whose colour (say) is missing from the catalog still teaches every other head: targets below zero
are masked for their head only, never dropping the row.
"""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from tailor.models.multitask import MultiTaskNet
from tailor.tasks.classify import FineTuning, log_prior


def masked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0
                         ) -> torch.Tensor | None:
    """Mean cross-entropy over the rows whose target is a class (>= 0); ``None`` when there is none."""
    known = targets >= 0
    if not bool(known.any()):
        return None
    return F.cross_entropy(logits[known], targets[known], label_smoothing=label_smoothing)


class MultiTaskTask(FineTuning):
    """Train a :class:`MultiTaskNet`: the loss is ``sum(loss_weights[a] * loss_a)`` over attributes ``a``.

    ``loss_weights``: attribute → weight (missing attributes weigh 1). ``class_counts``: attribute → training
    count per class, for logit adjustment (``logit_adjust_tau``, as in :class:`ClassificationTask`). The other
    arguments are :class:`ClassificationTask`'s. Validation logs each head's accuracy and class-balanced
    accuracy, and their means as ``val/acc`` and ``val/balanced_acc`` (what checkpoints are chosen by).
    """

    def __init__(self, model: MultiTaskNet, class_counts: Mapping[str, np.ndarray] | None = None,
                 loss_weights: Mapping[str, float] | None = None, optimizer: Callable = torch.optim.AdamW,
                 label_smoothing: float = 0.1, head_lr_scale: float = 10.0, layer_decay: float = 1.0,
                 warmup: float = 0.05, logit_adjust_tau: float = 0.0, freeze_bn: bool = True,
                 schedule: str = "cosine", channels_last: bool = True):
        super().__init__()
        self._setup_fine_tuning(model, optimizer, head_lr_scale, layer_decay, warmup, schedule, freeze_bn,
                                channels_last)
        unknown = set(loss_weights or {}) - set(model.attributes)
        if unknown:
            raise ValueError(f"loss_weights for {sorted(unknown)}: the model's attributes are {model.attributes}")
        self.loss_weights = {a: float((loss_weights or {}).get(a, 1.0)) for a in model.attributes}
        self.label_smoothing = label_smoothing
        self.logit_adjust_tau = logit_adjust_tau
        counts = class_counts or {}
        for a in model.attributes:
            self.register_buffer(f"log_prior_{a}", log_prior(counts.get(a), len(model.head_classes[a])),
                                 persistent=False)
        self.val_balanced = nn.ModuleDict({
            a: MulticlassAccuracy(num_classes=len(c), average="macro", ignore_index=-1)
            for a, c in model.head_classes.items()})

    def _losses(self, outputs: dict[str, torch.Tensor], targets: torch.Tensor, adjust: bool
                ) -> dict[str, torch.Tensor]:
        losses = {}
        for i, a in enumerate(self.model.attributes):
            logits = outputs[a]
            if adjust and self.logit_adjust_tau:
                logits = logits + self.logit_adjust_tau * getattr(self, f"log_prior_{a}")
            loss = masked_cross_entropy(logits, targets[:, i], self.label_smoothing if adjust else 0.0)
            if loss is not None:
                losses[a] = loss
        return losses

    def training_step(self, batch, batch_idx):
        images, targets = batch
        outputs = self(images)
        losses = self._losses(outputs, targets, adjust=True)
        loss = sum(self.loss_weights[a] * value for a, value in losses.items())
        accs = [_accuracy(outputs[a], targets[:, i]) for i, a in enumerate(self.model.attributes)]
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False)
        self.log("train/acc", float(np.nanmean(accs)), on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch, batch_idx):
        images, targets = batch
        outputs = self(images)
        losses = self._losses(outputs, targets, adjust=False)
        n = len(targets)
        accs = []
        for i, a in enumerate(self.model.attributes):
            acc = _accuracy(outputs[a], targets[:, i])
            accs.append(acc)
            if not np.isnan(acc):
                self.log(f"val/{a}/acc", acc, on_epoch=True, sync_dist=True, batch_size=n)
            self.val_balanced[a].update(outputs[a], targets[:, i].clamp(min=-1))
        self.log("val/loss", sum(losses.values()), on_epoch=True, sync_dist=True, batch_size=n)
        self.log("val/acc", float(np.nanmean(accs)), on_epoch=True, prog_bar=True, sync_dist=True, batch_size=n)

    def on_validation_epoch_end(self) -> None:
        # The mean of the heads' class-balanced accuracies: one number to choose a checkpoint by.
        values = []
        for a, metric in self.val_balanced.items():
            if metric.update_count:
                values.append(float(metric.compute()))
                self.log(f"val/{a}/balanced_acc", values[-1])
            metric.reset()
        if values:
            self.log("val/balanced_acc", float(np.mean(values)), prog_bar=True)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["heads"] = self.model.head_classes
        checkpoint["backbone"] = self.model.backbone_name
        checkpoint["image_size"] = self.model.image_size


def _accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Top-1 accuracy over the rows with a known target (NaN when there is none)."""
    known = targets >= 0
    if not bool(known.any()):
        return float("nan")
    return float((logits[known].argmax(1) == targets[known]).float().mean())
