"""Fitting a classifier's :class:`~tailor.names.head.NameHead` on its training features, and choosing the
balance between trained and name-only classes on the training data alone.

The balance (``scale``, ``shift``) is chosen by *leave-classes-out* cross-validation on the training table: the
trained categories are split into ``folds`` groups; each group in turn is hidden (its images become "products of
a category with no image"), a third of every other category's images is held out, and the probe and the map are
refitted on the rest. Every held-out image is then ranked among the remaining trained categories, the hidden
ones and the run's own name-only categories. The rule: *names must not cost the trained categories more than
``max_seen_loss``* of their held-out top-1 or top-5 (two points by default); among the settings that keep to it, the one
that names the hidden categories best (mean of their top-1 and top-5) wins. The harmonic mean of the two
accuracies, the usual figure of merit of generalised zero-shot learning, was tried first: on the sample's rare
categories it chose a shift on the edge of a cliff (trained-category top-1 0.69 held out), and the test years,
whose photos the probe is less sure of, fell off it (0.25). The test split is never looked at to choose.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from tailor.names.conse import imagenet_head, imagenet_names
from tailor.names.head import NameHead
from tailor.names.semantic_map import fit_semantic_map
from tailor.names.text import category_phrase, text_encoder, words

log = logging.getLogger(__name__)

SCALES = (0.1, 0.25, 0.5, 1.0, 2.0)
SHIFTS = tuple(float(s) for s in np.arange(-12.0, 4.01, 0.25))

ProbeFit = Callable[[torch.Tensor, torch.Tensor, int], list[tuple[torch.Tensor, torch.Tensor]]]


@dataclass
class NameSettings:
    """``gamma``/``lam``: the map's regularisation (ESZSL); ``top``: ImageNet classes per image in ConSE;
    ``folds``: classes groups in the leave-classes-out choice of the balance; ``seed``: their draw;
    ``max_seen_loss``: how much held-out top-1 of the trained categories the names may cost."""

    gamma: float = 1e4
    lam: float = 1.0
    top: int = 10
    folds: int = 3
    seed: int = 0
    max_seen_loss: float = 0.02


@dataclass
class Knowledge:
    """What names are scored with: the text encoder's vectors for the ImageNet classes, and each member's
    ImageNet head (weight, bias), read once."""

    imagenet_vectors: torch.Tensor
    imagenet_heads: list[tuple[torch.Tensor, torch.Tensor]]

    @classmethod
    def for_backbones(cls, backbones: Sequence[str]) -> "Knowledge":
        vectors = text_encoder().embed([words(n) for n in imagenet_names()])
        heads = []
        for name in backbones:
            head = imagenet_head(name)
            heads.append((head.weight.detach().clone(), head.bias.detach().clone()))
        return cls(vectors, heads)


@dataclass
class BalanceChoice:
    """The chosen ``scale`` and ``shift``, and what the choice saw (for results.json)."""

    scale: float
    shift: float
    seen_top1: float
    seen_top1_without_names: float
    name_only_top1: float
    name_only_top5: float
    held_out_images: int
    hidden_images: int
    table: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"scale": self.scale, "shift": self.shift, "seen_top1": self.seen_top1,
                "seen_top1_without_names": self.seen_top1_without_names, "name_only_top1": self.name_only_top1,
                "name_only_top5": self.name_only_top5, "held_out_images": self.held_out_images,
                "hidden_images": self.hidden_images, "shifts": self.table}


def phrases_for(classes: Sequence[str], taxonomy: Mapping[str, Sequence[str]]) -> list[str]:
    return [category_phrase(c, taxonomy.get(c, ())) for c in classes]


def build_name_head(features: torch.Tensor, targets: torch.Tensor, classes: Sequence[str],
                    name_only: Sequence[str], taxonomy: Mapping[str, Sequence[str]], widths: Sequence[int],
                    knowledge: Knowledge, settings: NameSettings = NameSettings(),
                    extra: tuple[torch.Tensor, list[str]] | None = None,
                    scale: float = 1.0, shift: float = 0.0) -> NameHead:
    """A :class:`NameHead` for ``name_only`` categories, its map fitted on ``features`` ((views, N, D) or (N, D))
    of ``classes`` (``targets`` index them) and on ``extra`` (features and labels of further categories with
    images, such as the top-20 of the run a fine-tuning started from: more categories make a better map)."""
    x = features.float().mean(0) if features.dim() == 3 else features.float()
    labels = [classes[int(t)] for t in targets]
    if extra is not None:
        extra_x = extra[0].float().mean(0) if extra[0].dim() == 3 else extra[0].float()
        x, labels = torch.cat([x, extra_x]), labels + list(extra[1])
    mapped_classes = sorted(set(labels))
    index = {c: i for i, c in enumerate(mapped_classes)}
    encoder = text_encoder()
    map_ = fit_semantic_map(x, torch.tensor([index[c] for c in labels]),
                            encoder.embed(phrases_for(mapped_classes, taxonomy)), settings.gamma, settings.lam)
    phrases = phrases_for(name_only, taxonomy)
    vectors = encoder.embed(phrases)
    weights, biases = zip(*knowledge.imagenet_heads) if knowledge.imagenet_heads else ((), ())
    head = NameHead(name_only, vectors, widths, weights, biases, knowledge.imagenet_vectors, map_.projection,
                    map_.offset, (0.0, 1.0, 0.0, 1.0), scale, shift, settings.top, phrases)
    with torch.no_grad():  # standardise each score by its spread over the training images
        conse, mapped = head.scores(x)
    head.standardise = [float(conse.mean()), float(conse.std().clamp_min(1e-6)),
                        float(mapped.mean()), float(mapped.std().clamp_min(1e-6))]
    return head


def choose_balance(features: torch.Tensor, targets: torch.Tensor, classes: Sequence[str], name_only: Sequence[str],
                   taxonomy: Mapping[str, Sequence[str]], widths: Sequence[int], knowledge: Knowledge,
                   fit_probe: ProbeFit, settings: NameSettings = NameSettings(),
                   extra: tuple[torch.Tensor, list[str]] | None = None) -> BalanceChoice:
    """Leave-classes-out choice of ``scale`` and ``shift`` (module docstring). ``fit_probe(features, targets,
    num_classes)`` fits the run's linear heads, one per member, as the run itself does."""
    views = features if features.dim() == 3 else features[None]
    targets = torch.as_tensor(targets).long()
    generator = np.random.default_rng(settings.seed)
    order = generator.permutation(len(classes))
    groups = [order[i::settings.folds] for i in range(settings.folds)]
    seen_logp, names, is_hidden, truth = [], [], [], []
    for hidden_ids in groups:
        hidden = set(int(i) for i in hidden_ids)
        kept = [i for i in range(len(classes)) if i not in hidden]
        if len(kept) < 2 or not hidden:
            continue
        train_rows, held_rows = _hold_out(targets, kept, generator)
        hidden_rows = torch.nonzero(torch.isin(targets, torch.tensor(sorted(hidden)))).flatten()
        remap = {c: j for j, c in enumerate(kept)}
        fold_targets = torch.tensor([remap[int(t)] for t in targets[train_rows]])
        heads = fit_probe(views[:, train_rows], fold_targets, len(kept))
        candidates = [classes[i] for i in sorted(hidden)] + [c for c in name_only]
        head = build_name_head(views[:, train_rows], fold_targets, [classes[i] for i in kept], candidates, taxonomy,
                               widths, knowledge, settings, extra)
        rows = torch.cat([held_rows, hidden_rows])
        x = views[:, rows].float().mean(0)
        probs = torch.stack([(part @ w.T + b).softmax(1) for part, (w, b) in zip(x.split(list(widths), 1), heads)])
        with torch.no_grad():
            seen_logp.append(probs.mean(0).clamp_min(1e-30).log())
            names.append(head.name_scores(x))
        position = {classes[i]: j for j, i in enumerate(kept)}
        position.update({c: len(kept) + j for j, c in enumerate(candidates)})
        truth.append(torch.tensor([position[classes[int(t)]] for t in targets[rows]]))
        is_hidden.append(torch.cat([torch.zeros(len(held_rows), dtype=torch.bool),
                                    torch.ones(len(hidden_rows), dtype=torch.bool)]))
    if not seen_logp:
        raise ValueError("choosing the name-only balance needs at least three trained categories")
    rows = []
    for scale in SCALES:
        for shift in SHIFTS:
            rows.append(_score_setting(scale, shift, seen_logp, names, truth, is_hidden))
    without = _score_setting(0.0, -1e9, seen_logp, names, truth, is_hidden)
    baseline = without["seen_top1"]
    allowed = [r for r in rows if all(r[k] >= without[k] - settings.max_seen_loss - 1e-9
                                      for k in ("seen_top1", "seen_top5"))]
    best = max(allowed, key=lambda r: (r["name_only_top1"] + r["name_only_top5"], -r["shift"], -r["scale"]))
    choice = BalanceChoice(best["scale"], best["shift"], best["seen_top1"], baseline, best["name_only_top1"],
                           best["name_only_top5"], int(sum(int((~h).sum()) for h in is_hidden)),
                           int(sum(int(h.sum()) for h in is_hidden)),
                           [r for r in rows if r["scale"] == best["scale"]])
    log.info("name-only balance: scale %.2f, shift %.2f (held-out trained-category top-1 %.3f, %.3f without names; "
             "hidden-category top-1 %.3f, top-5 %.3f)", choice.scale, choice.shift, choice.seen_top1, baseline,
             choice.name_only_top1, choice.name_only_top5)
    return choice


def _score_setting(scale: float, shift: float, seen_logp: list[torch.Tensor], names: list[torch.Tensor],
                   truth: list[torch.Tensor], is_hidden: list[torch.Tensor]) -> dict:
    """Top-1 of the held-out trained-category images, top-1 and top-5 of the hidden-category images, over
    every fold, with the name-only logits at ``scale · score + shift``."""
    hits1 = {False: 0, True: 0}
    hits5 = {False: 0, True: 0}
    counts = {False: 0, True: 0}
    for logp, score, target, hidden in zip(seen_logp, names, truth, is_hidden):
        logits = torch.cat([logp, scale * score + shift], dim=1)
        ranked = logits.topk(min(5, logits.shape[1]), dim=1).indices  # a catalog may have fewer than 5 classes
        top1, top5 = ranked[:, 0] == target, (ranked == target[:, None]).any(1)
        for side in (False, True):
            rows = hidden == side
            hits1[side] += int(top1[rows].sum())
            hits5[side] += int(top5[rows].sum())
            counts[side] += int(rows.sum())
    rate = lambda hits, side: round(hits[side] / max(counts[side], 1), 4)
    return {"scale": scale, "shift": shift, "seen_top1": rate(hits1, False), "seen_top5": rate(hits5, False),
            "name_only_top1": rate(hits1, True), "name_only_top5": rate(hits5, True)}


def _hold_out(targets: torch.Tensor, kept: Sequence[int], generator: np.random.Generator
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """A third of each kept category's images held out (a category with one image keeps it for training)."""
    train, held = [], []
    for c in kept:
        rows = torch.nonzero(targets == c).flatten().numpy()
        rows = generator.permutation(rows)
        n_held = len(rows) // 3
        held.extend(rows[:n_held].tolist())
        train.extend(rows[n_held:].tolist())
    return torch.tensor(sorted(train)), torch.tensor(sorted(held), dtype=torch.long)
