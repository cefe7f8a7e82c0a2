"""What one training step of a classifier is: the loss, the optimiser and its schedule.

Class-prior shift is the main enemy on a catalog (the even and odd years have very different category
mixes), so besides balanced sampling the task offers *logit adjustment* (Menon et al., 2021): training on
``logits + tau * log(prior)`` makes the raw logits estimate a class-balanced posterior at test time.
"""

from __future__ import annotations

from typing import Callable

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

from tailor.models.heads import PretrainedModel, TransferNet
from tailor.tasks.schedules import SCHEDULES, warmup_schedule


def log_prior(counts: np.ndarray | None, num_classes: int) -> torch.Tensor:
    """log of the training class prior (uniform when ``counts`` is None); empty classes get a tiny share."""
    counts = np.ones(num_classes) if counts is None else np.maximum(np.asarray(counts, dtype=np.float64), 1e-3)
    return torch.as_tensor(np.log(counts / counts.sum()), dtype=torch.float32)


class FineTuning(L.LightningModule):
    """What fine-tuning any :class:`PretrainedModel` shares: channels_last inputs, batch-norm layers kept
    fixed, a faster-learning head, per-depth learning rates, and a warmup-then-``schedule`` learning rate."""

    def _setup_fine_tuning(self, model: PretrainedModel, optimizer: Callable, head_lr_scale: float,
                           layer_decay: float, warmup: float, schedule: str, freeze_bn: bool,
                           channels_last: bool) -> None:
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {schedule!r}: one of {sorted(SCHEDULES)}")
        self.model = model
        self.optimizer_class = optimizer
        self.head_lr_scale = head_lr_scale
        self.layer_decay = layer_decay
        self.warmup = warmup
        self.schedule = schedule
        self.freeze_bn = freeze_bn
        self.channels_last = channels_last
        if channels_last:
            self.model.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor):
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)

    def on_train_batch_start(self, batch, batch_idx) -> None:
        # Every batch, not every epoch: Lightning puts the whole module back in train mode after validation.
        for module in self._fixed_norms:
            module.eval()

    def on_fit_start(self) -> None:
        self._fixed_norms = self.model.batchnorm_modules() if self.freeze_bn else self.model.frozen_modules()

    def configure_optimizers(self):
        groups = self.model.layer_groups()
        param_groups = []
        for depth, params in enumerate(reversed(groups)):  # head first, then backbone from the top down
            params = [p for p in params if p.requires_grad]
            if not params:
                continue
            scale = self.head_lr_scale if depth == 0 else self.layer_decay ** (depth - 1)
            param_groups.append({"params": params, "lr_scale": scale})
        optimizer = self.optimizer_class(param_groups)
        for group in optimizer.param_groups:
            group["lr"] = group["lr"] * group["lr_scale"]
        return {"optimizer": optimizer, "lr_scheduler": warmup_schedule(
            optimizer, self.trainer.estimated_stepping_batches, self.warmup, self.schedule)}


class ClassificationTask(FineTuning):
    """Train a :class:`TransferNet`.

    ``optimizer``: any ``torch.optim`` class; its arguments come from gin (``torch.optim.Adam.lr = 1e-3``).
    ``head_lr_scale``: the new head learns this many times faster than the pretrained backbone.
    ``layer_decay``: each backbone layer group below the top learns ``layer_decay`` times slower than the one
    above it (1.0: all the same).
    ``warmup``: fraction of steps with a linearly rising learning rate; then ``schedule`` ("cosine",
    "linear" or "constant") takes it to the end of training.
    ``logit_adjust_tau``: 0 disables logit adjustment; 1 is the standard setting.
    ``freeze_bn``: keep every batch-norm layer's running statistics as pretrained (its scale and shift still
    learn). Small, heavily augmented batches otherwise re-estimate them and shift every feature.
    """

    def __init__(self, model: TransferNet, class_counts: np.ndarray | None = None,
                 optimizer: Callable = torch.optim.AdamW, label_smoothing: float = 0.1,
                 head_lr_scale: float = 10.0, layer_decay: float = 1.0, warmup: float = 0.05,
                 logit_adjust_tau: float = 0.0, freeze_bn: bool = True, schedule: str = "cosine",
                 channels_last: bool = True):
        super().__init__()
        self._setup_fine_tuning(model, optimizer, head_lr_scale, layer_decay, warmup, schedule, freeze_bn,
                                channels_last)
        self.label_smoothing = label_smoothing
        self.logit_adjust_tau = logit_adjust_tau
        self.val_balanced = MulticlassAccuracy(num_classes=len(model.classes), average="macro")
        self.register_buffer("log_prior", log_prior(class_counts, len(model.classes)), persistent=False)

    def training_step(self, batch, batch_idx):
        images, targets = batch
        logits = self(images)
        train_logits = logits + self.logit_adjust_tau * self.log_prior if self.logit_adjust_tau else logits
        loss = F.cross_entropy(train_logits, targets, label_smoothing=self.label_smoothing)
        acc = (logits.argmax(1) == targets).float().mean()
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False)
        self.log("train/acc", acc, on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch, batch_idx):
        images, targets = batch
        logits = self(images)
        loss = F.cross_entropy(logits, targets)
        acc = (logits.argmax(1) == targets).float().mean()
        self.val_balanced(logits, targets)
        self.log("val/loss", loss, on_epoch=True, prog_bar=False, sync_dist=True, batch_size=len(targets))
        self.log("val/acc", acc, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=len(targets))
        # The mean of per-class recalls: the accuracy to expect when the test's class mix differs from training's.
        self.log("val/balanced_acc", self.val_balanced, on_epoch=True, prog_bar=True)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Enough to rebuild the classifier from the checkpoint alone (``TransferNet.saved_model_path``).
        checkpoint["classes"] = list(self.model.classes)
        checkpoint["backbone"] = self.model.backbone_name
        checkpoint["image_size"] = self.model.image_size
