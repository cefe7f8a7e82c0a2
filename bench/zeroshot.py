"""Leave-classes-out benchmark of categories from their names, on the bundled sample.

Three times (seeds 0, 1, 2) a seeded half of the rare categories that have training images (even years) is
*hidden*: their images are used for nothing but testing. Everything else is fitted on the even-year images of
the remaining categories (the top 20 and the other half of the rare ones), with the default ensemble's frozen
features (EfficientNet-Lite0/1/2, ImageNet weights, each image with its mirror image).

* **zero-shot**: every image of a hidden category (both years) ranked among all categories with no image —
  the hidden ones plus the catalog's other rare categories that have no even-year product — and among the
  hidden ones alone. Beside tailor's name head: chance; the issue's yardstick, ConSE from Lite0's ImageNet
  head with bare category names; and each of the head's two scores alone.
* **generalised**: the odd-year products of every rare category ranked among the trained rare categories and
  all name-only ones, with the balance chosen on the training images only (as ``configs/finetune.gin`` does),
  beside the same probe without names.

    python bench/zeroshot.py     # about 15 minutes on 2 CPU cores the first time (features are cached)

Writes bench/results/zeroshot.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from common import SPLITS, markdown, publish, start, top20_classes  # noqa: E402
from tailor.data.datasets import FashionDataset  # noqa: E402
from tailor.data.transforms import DataConfig, eval_transform  # noqa: E402
from tailor.evaluation.metrics import evaluate_scores  # noqa: E402
from tailor.models.backbones import backbone_data_config, create_backbone  # noqa: E402
from tailor.models.feature_cache import FeatureCache  # noqa: E402
from tailor.names.conse import ConSE, imagenet_head  # noqa: E402
from tailor.names.fit import Knowledge, NameSettings, build_name_head, choose_balance  # noqa: E402
from tailor.names.taxonomy import read_categories  # noqa: E402
from tailor.names.text import category_phrase, text_encoder  # noqa: E402
from tailor.tasks.probe import fit_linear_heads  # noqa: E402

BACKBONES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
SEEDS = (0, 1, 2)


def sample_features() -> tuple[pd.DataFrame, torch.Tensor, list[int]]:
    """Every sample image's table row and its features from each backbone, side by side ((2, N, sum D))."""
    frames = [pd.read_csv(SPLITS / name) for name in ("train.csv", "test.csv")]
    table = pd.concat(frames, ignore_index=True)
    table.to_csv(SPLITS.parent / "bench_zeroshot_all.csv", index=False)
    spec = FashionDataset(csv_file=SPLITS.parent / "bench_zeroshot_all.csv")
    parts, widths = [], []
    for name in BACKBONES:
        model = create_backbone(name).eval()
        transform = eval_transform(DataConfig.from_timm(backbone_data_config(model)))
        data = spec.load(None, transform, progress=False)
        parts.append(FeatureCache(model, f"{name}:pretrained", repr(transform), flip=True).features(
            data, desc=f"{name} features"))
        widths.append(parts[-1].shape[-1])
    return data.frame.reset_index(drop=True), torch.cat(parts, dim=-1), widths


def topk(scores: torch.Tensor, targets: torch.Tensor, k: int) -> float:
    return float((scores.topk(min(k, scores.shape[1]), 1).indices == targets[:, None]).any(1).float().mean())


def main() -> None:
    start(__doc__.splitlines()[0], "unused")
    frame, features, widths = sample_features()
    labels = frame["label"].to_numpy()
    even = (frame["year"] % 2 == 0).to_numpy()
    top = top20_classes()
    listed = read_categories(SPLITS / "categories.csv")
    trained_any = sorted(set(labels[even]))
    rare_seen = sorted(set(trained_any) - top)
    imageless = sorted(c for c in listed if c not in top and c not in set(trained_any))
    encoder = text_encoder()
    knowledge = Knowledge.for_backbones(BACKBONES)
    yardstick = ConSE(imagenet_head(BACKBONES[0]), encoder)
    lite0 = features[..., : widths[0]]
    settings = NameSettings()
    zero_rows, general_rows = [], []
    for seed in SEEDS:
        hidden = sorted(np.random.default_rng(seed).permutation(rare_seen)[: len(rare_seen) // 2])
        seen = [c for c in trained_any if c not in hidden]
        candidates = hidden + imageless
        train = np.flatnonzero(even & np.isin(labels, seen))
        index = {c: i for i, c in enumerate(seen)}
        targets = torch.tensor([index[c] for c in labels[train]])
        head = build_name_head(features[:, train], targets, seen, candidates, listed, widths, knowledge, settings)
        test = np.flatnonzero(np.isin(labels, hidden))
        x = features[:, test].mean(0)
        position = {c: i for i, c in enumerate(candidates)}
        truth = torch.tensor([position[c] for c in labels[test]])
        among_hidden = torch.arange(len(hidden))
        with torch.no_grad():
            conse, mapped = head.scores(x)
            bare = encoder.embed([category_phrase(c) for c in candidates])
            scorers = {"chance": torch.rand(len(test), len(candidates), generator=torch.Generator().manual_seed(seed)),
                       "ConSE, Lite0, bare names (the yardstick)": yardstick.scores(lite0[:, test], bare),
                       "ConSE, three heads, names with taxonomy": conse, "name map (ESZSL) alone": mapped,
                       "tailor: both, standardised": head.name_scores(x)}
        for name, scores in scorers.items():
            zero_rows.append({"seed": seed, "method": name, "top1": topk(scores, truth, 1), "top5": topk(scores, truth, 5),
                              "hidden top1": topk(scores[:, among_hidden], truth, 1),
                              "candidates": len(candidates), "hidden": len(hidden), "images": len(test)})
        general_rows += generalised(seed, features, widths, labels, even, top, seen, hidden, candidates, listed,
                                    knowledge, settings)
    publish("zeroshot", report(zero_rows, general_rows))


def generalised(seed, features, widths, labels, even, top, seen, hidden, candidates, listed, knowledge, settings):
    """The rare-category experiment with the hidden half: probe on the trained rare categories, name head with the
    top 20 as extra map categories, balance chosen on the training images; odd-year rare products scored."""
    rare = [c for c in seen if c not in top]
    train = np.flatnonzero(even & np.isin(labels, rare))
    index = {c: i for i, c in enumerate(rare)}
    targets = torch.tensor([index[c] for c in labels[train]])
    extra_rows = np.flatnonzero(even & np.isin(labels, sorted(top)))
    extra = (features[:, extra_rows], list(labels[extra_rows]))
    probe = dict(power=1.0, weight_decay=3e-5, calibration=None)
    fit = lambda f, t, n: fit_linear_heads(f, t, n, widths, **probe)
    choice = choose_balance(features[:, train], targets, rare, candidates, listed, widths, knowledge, fit, settings,
                            extra)
    head = build_name_head(features[:, train], targets, rare, candidates, listed, widths, knowledge, settings, extra,
                           scale=choice.scale, shift=choice.shift)
    heads = fit(features[:, train], targets, len(rare))
    test = np.flatnonzero(~even & ~np.isin(labels, sorted(top)))
    x = features[:, test].mean(0)
    with torch.no_grad():
        probs = torch.stack([(part @ w.T + b).softmax(1) for part, (w, b) in zip(x.split(widths, 1), heads)]).mean(0)
        stacked = torch.cat([probs.clamp_min(1e-30).log(), head(x)], 1).numpy()
    truth = list(labels[test])
    rows = []
    for name, scores, classes in (("probe, no names", probs.numpy(), rare),
                                  ("probe + name-only classes", stacked, rare + candidates)):
        result = evaluate_scores(scores, truth, classes, name_only=candidates if len(classes) > len(rare) else ())
        unseen = np.array([c not in set(rare) for c in truth])
        hits1 = np.array([classes[int(i)] == t for i, t in zip(np.argmax(scores, 1), truth)])
        rows.append({"seed": seed, "method": name, "top1": result.top1, "top5": result.top5,
                     "trained top1": result.seen_top1, "no-image top1": float(hits1[unseen].mean()),
                     "scale": choice.scale if len(classes) > len(rare) else None,
                     "shift": choice.shift if len(classes) > len(rare) else None, "images": len(test)})
    return rows


def report(zero_rows: list[dict], general_rows: list[dict]) -> str:
    def mean(rows, method, key):
        values = [r[key] for r in rows if r["method"] == method and r[key] is not None]
        return float(np.mean(values)) if values else None

    methods = list(dict.fromkeys(r["method"] for r in zero_rows))
    yard = mean(zero_rows, methods[1], "top1")
    zero = [{"method": m, "top1": mean(zero_rows, m, "top1"), "top5": mean(zero_rows, m, "top5"),
             "× yardstick": f"{mean(zero_rows, m, 'top1') / yard:.2f}×",
             "top1 among hidden only": mean(zero_rows, m, "hidden top1")} for m in methods]
    first = zero_rows[0]
    general_methods = list(dict.fromkeys(r["method"] for r in general_rows))
    general = [{"method": m, **{k: mean(general_rows, m, k) for k in ("top1", "top5", "trained top1", "no-image top1")}}
               for m in general_methods]
    per_seed = markdown(general_rows, ["seed", "method", "top1", "top5", "trained top1", "no-image top1", "scale",
                                       "shift", "images"])
    return "\n".join([
        "# Categories from their names: leave-classes-out on the sample", "",
        f"Seeds {', '.join(map(str, SEEDS))}: {first['hidden']} of the rare categories with training images hidden "
        f"each time (a seeded half); the default ensemble's frozen features.", "",
        f"## Zero-shot: images of the hidden categories among the {first['candidates']} categories with no image "
        f"(mean of {len(SEEDS)} seeds)", "",
        markdown(zero, ["method", "top1", "top5", "× yardstick", "top1 among hidden only"]), "",
        "## Generalised: odd-year products of every rare category, trained and name-only classes together", "",
        markdown(general, ["method", "top1", "top5", "trained top1", "no-image top1"]), "",
        "Per seed:", "", per_seed, ""])


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
