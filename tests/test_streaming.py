"""Streaming data and the device policy: images decoded by DataLoader workers when they do not fit the memory
budget, unreadable ones reported by path and skipped, and the same results on every device setting."""

import logging
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from tailor import distributed
from tailor.data.datasets import FashionDataset
from tailor.data.transforms import DataConfig, eval_transform
from tailor.models.features import extract_features
from tailor.runtime import DeviceError, resolve_device, worker_count

TRANSFORM = eval_transform(DataConfig(32, (0.5,) * 3, (0.5,) * 3))


class MeanColour(torch.nn.Module):
    """A tiny stand-in backbone: each image's mean colour (exactly what the pixels were)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


def test_auto_keeps_images_in_memory_only_when_they_fit_the_budget(tiny_dataset, caplog):
    csv = tiny_dataset / "styles.csv"
    with caplog.at_level(logging.INFO):
        roomy = FashionDataset(tiny_dataset, csv, in_memory="auto").load(progress=False)
        tight = FashionDataset(tiny_dataset, csv, in_memory="auto", memory_budget=1000).load(progress=False)
    assert roomy.images is not None and len(roomy.images) == 36
    assert tight.images is None and len(tight) == 36
    assert "keeping in memory 36 images" in caplog.text and "streaming 36 images" in caplog.text
    with pytest.raises(ValueError, match="in_memory"):
        FashionDataset(tiny_dataset, csv, in_memory="sometimes")


def test_streamed_and_in_memory_features_are_the_same_with_any_worker_count(tiny_dataset):
    csv = tiny_dataset / "styles.csv"
    kept = FashionDataset(tiny_dataset, csv, in_memory=True).load(None, TRANSFORM, progress=False)
    reference = extract_features(MeanColour(), kept, batch_size=5, progress=False)
    assert reference.shape == (2, 36, 3)
    for workers in (0, 2):
        streamed = FashionDataset(tiny_dataset, csv, in_memory=False).load(None, TRANSFORM, progress=False)
        features = extract_features(MeanColour(), streamed, batch_size=5, progress=False, num_workers=workers)
        torch.testing.assert_close(features, reference)


@pytest.mark.parametrize("workers", [0, 2])  # decoded by this process's threads, or by worker processes
def test_an_image_corrupt_past_its_header_is_skipped_by_the_worker_that_meets_it(tiny_dataset, tmp_path, caplog,
                                                                                  workers):
    root = tmp_path / "data"
    shutil.copytree(tiny_dataset, root)
    styles = pd.read_csv(root / "styles.csv")
    victim = root / "images" / f"{styles['id'].iloc[4]}.jpg"
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])  # the header is intact: only decoding finds the damage
    streamed = FashionDataset(root, root / "styles.csv", in_memory=False).load(None, TRANSFORM, progress=False)
    assert len(streamed) == 36  # the quick header check lets it through
    with caplog.at_level(logging.WARNING):
        features = extract_features(MeanColour(), streamed, batch_size=4, progress=False, num_workers=workers)
    assert features.shape == (2, 35, 3) and len(streamed) == 35  # the row is gone from the table too
    assert victim.name in caplog.text and "cannot be decoded" in caplog.text
    assert styles["id"].iloc[4] not in set(streamed.frame["id"])
    expected = np.delete(np.arange(36), 4)
    assert list(streamed.frame["id"]) == list(styles["id"].iloc[expected])
    assert list(streamed.source_rows) == list(expected)  # arrays kept beside the table can follow it


def test_device_names_resolve_or_fail_with_one_clear_line():
    assert resolve_device("auto") == (torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu"))
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="no usable CUDA GPU"):
            resolve_device("cuda:1")
    with pytest.raises(DeviceError, match="unknown device 'gpu-please'"):
        resolve_device("gpu-please")
    assert worker_count("auto", decodes=False) == 0 and worker_count("auto") >= 1 and worker_count(3) == 3
    # a model on the CPU decodes in threads between batches: worker processes would compete with it
    assert worker_count("auto", device=torch.device("cpu")) == 0 and worker_count(2, device=torch.device("cpu")) == 2
    with pytest.raises(ValueError, match="num_workers"):
        worker_count("many")


def test_a_single_process_runtime_computes_on_its_device_and_gathers_in_dataset_order():
    runtime = distributed.start("cpu")
    assert (runtime.world_size, runtime.rank, runtime.device) == (1, 0, torch.device("cpu"))
    assert runtime.sampler(10) is None and runtime.is_zero and not runtime.several
    values, rows = runtime.gather(torch.arange(6.0).reshape(3, 2), torch.tensor([2, 0, 1]))
    assert rows.tolist() == [0, 1, 2] and values[:, 0].tolist() == [2.0, 4.0, 0.0]
    assert distributed.Runtime.local("cpu") == runtime  # nothing remembered between calls in one process
