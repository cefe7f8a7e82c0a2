"""What every benchmark script shares: the bundled sample's splits, and publishing a result table."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SPLITS = REPO / "experiments" / "splits"


def ensure_splits() -> None:
    """Make the seed's splits of the bundled sample unless they exist."""
    if not (SPLITS / "test.csv").is_file():
        subprocess.run([sys.executable, "-m", "tailor", "splits", "data/styles.csv", str(SPLITS),
                        "--images", "data/sample/images"], cwd=REPO, check=True, capture_output=True)


def top20_classes() -> set[str]:
    """The splits' top-20 categories, read from ``top_classes.txt`` as the package reads it."""
    from tailor.data.datasets import FashionDataset, top_classes

    return top_classes(FashionDataset(csv_file=SPLITS / "test.csv"))


def start(description: str, reuse_help: str) -> argparse.Namespace:
    """What an accuracy benchmark does first: read ``--reuse``, keep freed memory (as the CLI does), make the
    splits."""
    from tailor.machine import keep_freed_memory

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--reuse", action="store_true", help=reuse_help)
    args = parser.parse_args()
    keep_freed_memory()
    ensure_splits()
    return args


def publish(name: str, text: str) -> None:
    """Print ``text`` and keep it as ``bench/results/<name>.md``."""
    print(text)
    out = REPO / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.md").write_text(text)


def markdown(rows: list[dict], columns: list[str]) -> str:
    """A markdown table of ``rows``' ``columns``: rates to four decimals, other numbers to one."""
    def cell(v):
        if v is None:
            return "–"
        return f"{v:.4f}" if isinstance(v, float) and v <= 1.0 else (f"{v:.1f}" if isinstance(v, float) else str(v))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def frozen_logistic_regression(train, test, backbone: str = "efficientnet_lite0", balanced: bool = False):
    """The issues' yardstick: scikit-learn's logistic regression on frozen ImageNet features of ``train``
    (one view per image, no augmentation), scored on ``test`` with tailor's own metrics, so that test rows of
    classes the training set lacks count as errors exactly as in a tailor run. Returns a ClassificationResult."""
    import torch
    from sklearn.linear_model import LogisticRegression

    from tailor.evaluation.metrics import evaluate_scores
    from tailor.models.backbones import create_backbone
    from tailor.models.features import extract_features

    model = create_backbone(backbone).eval().to(memory_format=torch.channels_last)
    f_train = extract_features(model, train, flip=False, progress=False)[0].numpy()
    f_test = extract_features(model, test, flip=False, progress=False)[0].numpy()
    clf = LogisticRegression(max_iter=3000, class_weight="balanced" if balanced else None)
    clf.fit(f_train, train.targets)
    scores = np.zeros((len(f_test), len(train.classes)))
    scores[:, clf.classes_] = clf.predict_proba(f_test)
    return evaluate_scores(scores, list(test.frame["label"]), train.classes, train.class_counts())
