"""Two-process DDP on the CPU (gloo): the Trainer's strategy is a binding, and both ranks end in agreement."""

import json
import subprocess
import sys

import pytest

SCRIPT = r'''
import json, sys
import torch
from torch.utils.data import DataLoader
from tailor.data.datasets import FashionDataset
from tailor.data.transforms import DataConfig, train_transform
from tailor.models.heads import TransferNet
from tailor.tasks.classify import ClassificationTask
from tailor.data.samplers import BalancedSampler
from tailor.training import make_trainer

root, out = sys.argv[1], sys.argv[2]


class Checked(ClassificationTask):
    def on_train_end(self):
        checksum = torch.stack([p.detach().double().sum() for p in self.parameters()]).sum()
        gathered = self.all_gather(checksum.float().reshape(1))
        if self.trainer.is_global_zero:
            json.dump({"world_size": self.trainer.world_size, "checksums": gathered.flatten().tolist(),
                       "steps": self.trainer.global_step}, open(out, "w"))


data = FashionDataset(root, f"{root}/styles.csv").load(progress=False)
model = TransferNet(data.classes, pretrained=False, image_size=32)
data = data.with_transform(train_transform(DataConfig(32, (0.5,) * 3, (0.5,) * 3)))
loader = DataLoader(data, batch_size=4, sampler=BalancedSampler(data.targets, seed=1))
trainer = make_trainer(out + ".run", max_epochs=1, max_steps=3, accelerator="cpu", devices=2, strategy="ddp",
                       monitor="train/acc", progress=False)
trainer.fit(Checked(model), loader)
'''


@pytest.mark.slow
def test_two_process_ddp_ranks_agree(tiny_dataset, tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(SCRIPT)
    out = tmp_path / "ddp.json"
    result = subprocess.run([sys.executable, str(script), str(tiny_dataset), str(out)], cwd=tmp_path,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["world_size"] == 2 and report["steps"] == 3
    first, second = report["checksums"]
    assert first == pytest.approx(second, rel=1e-6)  # gradients were averaged: the replicas never diverged
