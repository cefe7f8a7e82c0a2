"""Bad images: each is read correctly or reported by path, before training and in predict; memory stays bounded."""

import resource

import numpy as np
import pytest
from PIL import Image

from tailor.data.images import ImageError, decode_image, scan_images


def make_bad_images(folder):
    """Every kind of bad and awkward image, with what decode_image must do with it."""
    rgb = np.random.default_rng(0).integers(0, 255, (60, 40, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(folder / "good.jpg")
    good = (folder / "good.jpg").read_bytes()
    cases = {
        "truncated.jpg": ("error", lambda p: p.write_bytes(good[: len(good) // 3])),
        "zero.jpg": ("error", lambda p: p.write_bytes(b"")),
        "text.jpg": ("error", lambda p: p.write_text("<html>not found</html>")),
        "header-only.jpg": ("error", lambda p: p.write_bytes(good[:20])),
        "cmyk.jpg": ("ok", lambda p: Image.fromarray(rgb).convert("CMYK").save(p)),
        "gray.jpg": ("ok", lambda p: Image.fromarray(rgb).convert("L").save(p)),
        "rgba.png": ("ok", lambda p: Image.fromarray(rgb).convert("RGBA").save(p)),
        "palette.png": ("ok", lambda p: Image.fromarray(rgb).convert("P").save(p)),
        "sixteen.png": ("ok", lambda p: Image.fromarray((rgb[..., 0].astype(np.uint16) * 257)).save(p)),
        "png-named.jpg": ("ok", lambda p: Image.fromarray(rgb).save(p, format="PNG")),
        "bomb.png": ("error", lambda p: Image.new("1", (10_000, 10_000)).save(p)),  # 100 megapixels
    }
    for name, (_, make) in cases.items():
        make(folder / name)
    return {name: outcome for name, (outcome, _) in cases.items()}


def test_every_bad_image_is_read_or_reported(tmp_path):
    cases = make_bad_images(tmp_path)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for name, outcome in cases.items():
        if outcome == "ok":
            image = decode_image(tmp_path / name)
            assert image.shape == (3, 60, 40) and image.dtype.itemsize == 1, name
        else:
            with pytest.raises(ImageError) as info:
                decode_image(tmp_path / name)
            assert info.value.path.endswith(name)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 200, f"peak memory grew {grown_mb:.0f} MB: the bomb was decoded"
    assert "decompression bomb" in str(pytest.raises(ImageError, decode_image, tmp_path / "bomb.png").value)

    problems = scan_images(sorted(tmp_path.iterdir()))
    assert sorted(p.path.rsplit("/", 1)[-1] for p in problems) == sorted(n for n, o in cases.items() if o == "error")
