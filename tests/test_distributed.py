"""Two processes on the CPU (gloo), as the README's multi-device commands run them: ranks split the feature passes and
the training, and agree with one process."""

import json
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pandas as pd
import pytest
import torch

SCRIPT = r"""
import json, sys
import torch
from torch.utils.data import DataLoader
from tailor import distributed
from tailor.data.datasets import FashionDataset
from tailor.data.samplers import BalancedSampler
from tailor.data.transforms import DataConfig, eval_transform, train_transform
from tailor.models.backbones import backbone_data_config, create_backbone
from tailor.models.features import run_pass
from tailor.models.heads import TransferNet
from tailor.tasks.classify import ClassificationTask
from tailor.training import make_trainer

root, out, devices = sys.argv[1], sys.argv[2], int(sys.argv[3])
ranks = distributed.start(device="cpu", devices=devices)

# a feature pass split across the ranks, streamed through workers
torch.manual_seed(0)
model = create_backbone("efficientnet_lite0").eval()
transform = eval_transform(DataConfig.from_timm(backbone_data_config(model), 96))
data = FashionDataset(root, f"{root}/styles.csv", in_memory=False).load(None, transform, progress=False)


def features_and_rank(images):
    features = model(images)
    return torch.cat([features, torch.full((len(images), 1), float(ranks.rank))], dim=1)


result = run_pass(features_and_rank, data, batch_size=4, progress=False, runtime=ranks)
if ranks.is_zero:
    torch.save({"outputs": result.outputs, "rows": torch.as_tensor(result.rows), "world_size": ranks.world_size},
               out + ".pass.pt")

if devices > 1:  # then DDP training, the Trainer joining the same process group


    class Checked(ClassificationTask):
        def on_train_end(self):
            checksum = torch.stack([p.detach().double().sum() for p in self.parameters()]).sum()
            gathered = self.all_gather(checksum.float().reshape(1))
            if self.trainer.is_global_zero:
                json.dump({"world_size": self.trainer.world_size, "checksums": gathered.flatten().tolist(),
                           "steps": self.trainer.global_step}, open(out + ".ddp.json", "w"))


    data = FashionDataset(root, f"{root}/styles.csv").load(progress=False)
    net = TransferNet(data.classes, pretrained=False, image_size=32)
    data = data.with_transform(train_transform(DataConfig(32, (0.5,) * 3, (0.5,) * 3)))
    loader = DataLoader(data, batch_size=4, sampler=BalancedSampler(data.targets, seed=1))
    trainer = make_trainer(out + ".run", max_epochs=1, max_steps=3, accelerator="cpu", devices=2, strategy="ddp",
                           monitor="train/acc", progress=False, runtime=ranks)
    trainer.fit(Checked(net), loader)
"""


@pytest.fixture(scope="module")
def two_processes(tiny_dataset, tmp_path_factory) -> Path:
    """:data:`SCRIPT` in two CPU processes (gloo): where its outputs start (``.pass.pt``, ``.ddp.json``)."""
    work = tmp_path_factory.mktemp("two")
    script = work / "two.py"
    script.write_text(SCRIPT)
    done = subprocess.run([sys.executable, str(script), str(tiny_dataset), str(work / "two"), "2"], cwd=work,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return work / "two"


@pytest.mark.slow
def test_two_process_ddp_ranks_agree(two_processes):
    report = json.loads(Path(f"{two_processes}.ddp.json").read_text())
    assert report["world_size"] == 2 and report["steps"] == 3
    first, second = report["checksums"]
    assert first == pytest.approx(second, rel=1e-6)  # gradients were averaged: the replicas never diverged


@pytest.mark.slow
def test_a_feature_pass_split_across_two_processes_agrees_with_one(two_processes, tiny_dataset, tmp_path):
    """Two CPU processes (gloo) each compute a share of the rows, streamed through workers; rank 0 gets every
    row back in dataset order, equal to what one process (the same script, run in this process) computes."""
    one_out = tmp_path / "one"
    with mock.patch.object(sys, "argv", ["one.py", str(tiny_dataset), str(one_out), "1"]):
        exec(compile(SCRIPT, "one.py", "exec"), {"__name__": "__main__"})
    one, two = (torch.load(f"{out}.pass.pt", weights_only=True) for out in (one_out, two_processes))
    assert two["world_size"] == 2 and one["world_size"] == 1
    n = len(one["rows"])
    assert n == 36 and torch.equal(one["rows"], torch.arange(n)) and torch.equal(two["rows"], torch.arange(n))
    ranks = two["outputs"][:, -1]
    assert set(ranks.tolist()) == {0.0, 1.0} and (ranks == 0).sum() == n // 2  # each rank did half the rows
    torch.testing.assert_close(two["outputs"][:, :-1], one["outputs"][:, :-1], atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_two_process_runs_and_predict_agree_with_one_process(tiny_dataset, tmp_path):
    """The README's multi-device command shape on the CPU: `tailor run` of the default transfer config (its
    three-backbone ensemble, at 64 px) with make_trainer.devices=2, and `tailor predict --devices 2` over a
    folder, give what one process gives (run in this process; the two-process commands in their own)."""
    from conftest import run_tailor, run_tailor_process

    common = ["-c", "configs/transfer.gin", "-p", "TransferNet.image_size=64",
              "-p", f"FashionDataset.root_dir='{tiny_dataset}'",
              "-p", f"FashionDataset.csv_file='{tiny_dataset}/styles.csv'",
              "-p", f"evaluate/FashionDataset.csv_file='{tiny_dataset}/styles.csv'", "-p", "evaluate.group='all'",
              "-p", f"main.output_dir='{tmp_path}'"]
    two_procs = ["-p", "make_trainer.accelerator='cpu'", "-p", "make_trainer.devices=2",
                 "-p", "make_trainer.strategy='ddp'"]
    for name, extra, run in (("one", [], run_tailor), ("two", two_procs, run_tailor_process)):
        done = run("run", *common, "-p", f"main.name='{name}'", *extra)
        assert done.returncode == 0, done.stderr[-3000:]
    one, two = (json.loads((tmp_path / n / "results.json").read_text()) for n in ("one", "two"))
    assert two["world_size"] == 2 and "world_size" not in one
    assert two["top1"] == one["top1"] and two["per_class"] == one["per_class"]
    stored = [torch.load(tmp_path / n / "probe_features.pt", weights_only=True)["features"].float() for n in ("one", "two")]
    torch.testing.assert_close(stored[1], stored[0], atol=1e-5, rtol=0)

    images = tiny_dataset / "images"
    for name, extra, run in (("one", [], run_tailor), ("two", ["--devices", "2"], run_tailor_process)):
        done = run("predict", str(tmp_path / "one"), str(images), "--device", "cpu", "--csv",
                   str(tmp_path / f"{name}.csv"), *extra)
        assert done.returncode == 0, done.stderr[-3000:]
    single, double = ((tmp_path / f"{n}.csv").read_text() for n in ("one", "two"))
    assert single == double and single.count("\n") == 37  # header + every image, same order, same scores


@pytest.mark.slow
def test_metric_and_fewshot_configs_run_in_two_processes(tmp_path):
    """configs/triplet.gin and configs/protonet.gin with two CPU processes: shared feature passes, DDP
    training of the projection and of the episodic head, rank 0's results."""
    from conftest import make_tiny_dataset, run_tailor_process as run_tailor

    root = make_tiny_dataset(tmp_path / "data", ["Watches", "Sunglasses", "Tshirts", "Casual Shoes"], 10, size=40)
    styles = pd.read_csv(root / "styles.csv")
    styles[styles["articleType"].isin(["Watches", "Sunglasses"])].to_csv(tmp_path / "base.csv", index=False)
    two = ["-p", "make_trainer.accelerator='cpu'", "-p", "make_trainer.devices=2", "-p", "make_trainer.strategy='ddp'",
           "-p", f"main.output_dir='{tmp_path}'", "-p", "make_trainer.progress=False",
           "-p", f"FashionDataset.root_dir='{root}'", "-p", f"evaluate/FashionDataset.csv_file='{root}/styles.csv'"]
    metric = run_tailor("run", "-c", "configs/triplet.gin", *two, "-p", f"FashionDataset.csv_file='{root}/styles.csv'",
                        "-p", "main.num_epochs=2", "-p", "metric.image_size=64", "-p", "metric.batch_size=8",
                        "-p", "metric.val_fraction=0.25", "-p", "Projection.dim=8", "-p", "metric.tsne=False",
                        "-p", "metric.colour_powers=[0.0]", "-p", "metric.colour_weight_decays=[0.03]")
    assert metric.returncode == 0, metric.stderr[-3000:]
    results = json.loads((tmp_path / "triplet" / "results.json").read_text())
    assert results["world_size"] == 2 and results["epochs"] == 2 and results["index_size"] == 80
    assert 0.0 <= results["top1"] <= 1.0

    fewshot = run_tailor("run", "-c", "configs/protonet.gin", *two, "-p", f"FashionDataset.csv_file='{tmp_path}/base.csv'",
                         "-p", "fewshot.n_way=2", "-p", "fewshot.shots=(1,)", "-p", "fewshot.q_query=4",
                         "-p", "fewshot.episodes=20", "-p", "fewshot.episodes_per_epoch=10",
                         "-p", "fewshot.val_episodes=4", "-p", "main.num_epochs=1")
    assert fewshot.returncode == 0, fewshot.stderr[-3000:]
    results = json.loads((tmp_path / "protonet" / "results.json").read_text())
    assert results["world_size"] == 2 and "2-way 1-shot (protonet, trained)" in results["fewshot"]
    assert (tmp_path / "protonet" / "fewshot_net.pt").is_file()
