"""Images: odd formats decode, bad files are found before training, and paths never leave the root."""

import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tailor.data.datasets import FashionDataset
from tailor.data.images import ImageError, UnsafePathError, decode_image, resolve_under, scan_images


@pytest.fixture
def odd_images(tmp_path):
    """One image of each awkward kind, and bad files."""
    rgb = np.full((40, 30, 3), 200, np.uint8)
    Image.fromarray(rgb).convert("L").save(tmp_path / "gray.png")
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg")
    rgba = np.zeros((40, 30, 4), np.uint8)  # fully transparent: must come out white, not black
    Image.fromarray(rgba, "RGBA").save(tmp_path / "clear.png")
    Image.fromarray(np.full((40, 30), 60000, np.uint16)).save(tmp_path / "deep.png")
    Image.fromarray(rgb).save(tmp_path / "good.jpg")
    data = (tmp_path / "good.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image at all")
    return tmp_path


def test_awkward_formats_decode_to_rgb(odd_images):
    for name in ("gray.png", "cmyk.jpg", "clear.png", "deep.png", "good.jpg"):
        image = decode_image(odd_images / name)
        assert image.dtype.is_floating_point is False and image.shape == (3, 40, 30), name
    assert decode_image(odd_images / "clear.png").min() == 255  # transparent onto white
    assert decode_image(odd_images / "deep.png").max() == 255   # 16-bit scaled, not clipped to black


def test_large_jpegs_decode_at_the_smallest_scale_that_covers_the_input(tmp_path):
    """A full-size catalog photo (1800×2400) decodes at 1/8 scale when that still covers ``min_side``, at the
    scale ``max_side`` needs otherwise; a PNG (no draft mode) and small JPEGs are only resized."""
    gradient = np.linspace(0, 255, 2400, dtype=np.uint8)[:, None, None].repeat(1800, 1).repeat(3, 2)
    Image.fromarray(gradient).save(tmp_path / "full.jpg", quality=90)
    assert decode_image(tmp_path / "full.jpg", max_side=320).shape == (3, 320, 240)  # 1/4 scale, then resized
    small = decode_image(tmp_path / "full.jpg", max_side=320, min_side=224)
    assert small.shape == (3, 300, 225)  # 1/8 scale: both sides still at least 224
    assert decode_image(tmp_path / "full.jpg", max_side=320, min_side=256).shape == (3, 320, 240)
    # the same picture either way: the top-to-bottom gradient survives the cheaper decode
    rows = small.float().mean(dim=(0, 2))
    assert rows[0] < 20 and rows[-1] > 235 and bool((rows[1:] >= rows[:-1] - 2).all())
    Image.fromarray(gradient[:400, :300]).save(tmp_path / "small.jpg")
    assert decode_image(tmp_path / "small.jpg", max_side=320, min_side=224).shape == (3, 320, 240)


def test_bad_files_are_reported_by_path(odd_images):
    for name, reason in (("truncated.jpg", "cannot be decoded"), ("empty.jpg", "cannot be decoded"),
                         ("text.jpg", "cannot be decoded"), ("missing.jpg", "file not found")):
        with pytest.raises(ImageError, match=reason) as info:
            decode_image(odd_images / name)
        assert info.value.path.endswith(name)
    problems = scan_images([odd_images / n for n in ("good.jpg", "truncated.jpg", "missing.jpg")])
    assert sorted(os.path.basename(p.path) for p in problems) == ["missing.jpg", "truncated.jpg"]


def test_paths_that_leave_the_root_are_refused(tmp_path):
    root = tmp_path / "root"
    (root / "images").mkdir(parents=True)
    (tmp_path / "secret.jpg").write_bytes(b"x")
    os.symlink(tmp_path / "secret.jpg", root / "images" / "link.jpg")
    assert resolve_under(root, "images/1.jpg") == (root / "images" / "1.jpg").resolve()
    for bad in ("../secret.jpg", "images/../../secret.jpg", str(tmp_path / "secret.jpg"), "images/link.jpg", ""):
        with pytest.raises(UnsafePathError):
            resolve_under(root, bad)


def test_dataset_skips_bad_images_or_stops_when_asked(tiny_dataset, tmp_path):
    styles = pd.read_csv(tiny_dataset / "styles.csv")
    broken = styles.iloc[0]["id"]
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    for pid in styles["id"]:
        src = (tiny_dataset / "images" / f"{pid}.jpg").read_bytes()
        (root / "images" / f"{pid}.jpg").write_bytes(src[:100] if pid == broken else src)
    (root / "images" / f"{styles.iloc[1]['id']}.jpg").unlink()
    styles.to_csv(root / "styles.csv", index=False)

    dataset = FashionDataset(root, root / "styles.csv").load(progress=False)
    assert len(dataset) == len(styles) - 2
    image, label = dataset[0]
    assert image.shape[0] == 3 and 0 <= label < len(dataset.classes)
    with pytest.raises(ImageError, match="2 unreadable"):
        FashionDataset(root, root / "styles.csv", skip_bad_images=False).load(progress=False)


def test_dataset_refuses_a_csv_whose_paths_escape(tmp_path):
    (tmp_path / "root").mkdir()
    csv = tmp_path / "labels.csv"
    csv.write_text("image,label\nok.jpg,a\n../../etc/passwd,b\n")
    with pytest.raises(UnsafePathError, match="line 3"):
        FashionDataset(tmp_path / "root", csv).load(progress=False)
