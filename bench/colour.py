"""Benchmark of the colour head on the bundled sample (even years train, odd years test): the multi-attribute
model's ``baseColour`` head (frozen features + foreground colour descriptor, class prior chosen by
cross-validation on the training years) beside the yardsticks, measured in the same run: a 6×6×6 Lab
histogram of the non-white pixels with a plain logistic regression, and the same histogram beside frozen
Lite0 features.

    python bench/colour.py           # about 6 minutes on 2 CPU cores
    python bench/colour.py --reuse   # reuse a finished experiments/bench_colour run

Writes bench/results/colour.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from common import REPO, markdown, publish, start  # noqa: E402
from tailor.data.datasets import FashionDataset  # noqa: E402
from tailor.data.transforms import DataConfig, eval_transform  # noqa: E402
from tailor.models.backbones import backbone_data_config, create_backbone  # noqa: E402
from tailor.models.colour import rgb_to_lab  # noqa: E402
from tailor.models.feature_cache import FeatureCache  # noqa: E402

RUN = "bench_colour"
COLUMN = "baseColour"


def lab_histogram(image: torch.Tensor) -> np.ndarray:
    """The yardstick descriptor: a 6×6×6 Lab histogram of the pixels that are not near-white."""
    rgb = image.float()[None] / 255
    keep = ~(rgb[0] >= 235 / 255).all(0)
    lab = rgb_to_lab(rgb)[0][:, keep] if keep.any() else rgb_to_lab(rgb)[0].flatten(1)
    bins = [((lab[0] / 100) * 6).long().clamp(0, 5), ((lab[1] + 128) / 256 * 6).long().clamp(0, 5),
            ((lab[2] + 128) / 256 * 6).long().clamp(0, 5)]
    counts = torch.bincount(bins[0] * 36 + bins[1] * 6 + bins[2], minlength=216).float()
    return (counts / counts.sum()).numpy()


def yardsticks() -> dict[str, float]:
    sets = {}
    backbone = create_backbone("efficientnet_lite0").eval()
    transform = eval_transform(DataConfig.from_timm(backbone_data_config(backbone)))
    cache = FeatureCache(backbone, "efficientnet_lite0:pretrained", repr(transform), flip=True)
    for split in ("train", "test"):
        spec = FashionDataset(csv_file=REPO / "experiments" / "splits" / f"{split}.csv", label_column=COLUMN)
        data = spec.load(progress=False)
        known = data.frame["label"].notna().to_numpy()
        histograms = np.stack([lab_histogram(data.image(i)) for i in range(len(data))])
        features = cache.features(data.with_transform(transform), progress=False).mean(0).numpy()
        sets[split] = (histograms[known], features[known], data.frame["label"].to_numpy()[known])
    out = {}
    for name, use in (("Lab histogram + logistic regression", lambda h, f: h),
                      ("Lab histogram + frozen Lite0 + logistic regression", lambda h, f: np.hstack([h, f]))):
        x_train, x_test = use(*sets["train"][:2]), use(*sets["test"][:2])
        scaler = StandardScaler().fit(x_train)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model = LogisticRegression(max_iter=2000).fit(scaler.transform(x_train), sets["train"][2])
        out[name] = float((model.predict(scaler.transform(x_test)) == sets["test"][2]).mean())
    return out


def main() -> None:
    args = start(__doc__.splitlines()[0], "reuse a finished experiments/bench_colour run")
    results_file = REPO / "experiments" / RUN / "results.json"
    if not (args.reuse and results_file.is_file()):
        command = ["tailor", "run", "-c", "configs/attributes.gin", "-p", f"main.name='{RUN}'",
                   "-p", f"attributes.columns=['{COLUMN}']", "--fresh"]
        print("$", " ".join(command), flush=True)
        subprocess.run(command, cwd=REPO, check=True)
    results = json.loads(results_file.read_text())
    head = results["attribute_results"][COLUMN]
    chosen = results.get("probes", {}).get(COLUMN, {})
    rows = [{"colour model": name, "top-1": top1} for name, top1 in yardsticks().items()]
    rows.append({"colour model": f"tailor: frozen Lite0 + foreground colour descriptor (class prior "
                                 f"{chosen.get('power')}, weight decay {chosen.get('weight_decay')}, chosen by "
                                 f"cross-validation on the training years)", "top-1": head["top1"],
                 "top-5": head.get("top5")})
    text = (f"## Colour from pixels: `{COLUMN}` top-1 on the sample's odd years\n\n"
            f"{head['num_test']} test products, {head['classes']} colours; every model trained on the even years "
            f"only, measured in the same run.\n\n" + markdown(rows, ["colour model", "top-1", "top-5"]) + "\n")
    publish("colour", text)


if __name__ == "__main__":
    main()
