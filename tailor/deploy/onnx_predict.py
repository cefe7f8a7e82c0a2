"""Predictions from an exported model with ONNX Runtime, Pillow and NumPy alone: ``tailor predict MODEL.onnx``
never imports torch (a serving stack without the training code, and a command that answers in about a second
instead of spending seconds importing torch, torchvision and Lightning).

Images are prepared as :func:`tailor.data.transforms.eval_transform` prepares them for the torch model: the
same decoding (:func:`~tailor.data.decoding.decode_rgb`), a bilinear, antialiased resize of the whole image to
the input size (Pillow's, which torchvision's antialiased resize was written to match), scaling to [0, 1] and
the model's normalisation. ``tests/test_export.py`` holds the two paths' predictions together.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import onnxruntime as ort
from PIL import Image
from tqdm import tqdm

from tailor.data.decoding import ImageError, decode_rgb
from tailor.deploy.onnx_file import ExportError, OnnxSession
from tailor.predictions import AttributePrediction, Prediction, top_labels

#: the longer side images are decoded at before resizing (what the torch predictors use)
DECODE_SIDE = 512


class Device:
    """Where ONNX Runtime runs: ``'cpu'``, ``'cuda'`` / ``'cuda:N'``, or ``'auto'`` (its CUDA provider when it has
    one); the ``type`` and ``index`` of a torch.device without torch."""

    def __init__(self, name: str = "auto"):
        text = str(name).strip().lower()
        has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
        if text == "auto":
            text = "cuda" if has_cuda else "cpu"
        kind, _, index = text.partition(":")
        if kind not in ("cpu", "cuda") or (index and not index.isdigit()):
            raise ValueError(f"unknown device {name!r}: 'auto', 'cpu', 'cuda' or 'cuda:N'")
        if kind == "cuda" and not has_cuda:
            raise ValueError(f"device {name!r} asked for, but this ONNX Runtime has no CUDA provider "
                             f"(install onnxruntime-gpu, or use 'auto' or 'cpu')")
        self.type, self.index = kind, int(index) if index else None


class ExportedPredictor:
    """An exported classifier or multi-attribute model, fed image files, on ``device`` with ``threads`` of
    ONNX Runtime (0: one per core)."""

    def __init__(self, path: str | Path, device: str = "auto", threads: int = 0):
        self.session = OnnxSession(path, threads, device=Device(device))
        self.info = self.session.info
        if self.info.kind == "embedding":
            raise ExportError(f"{path}: an embedding model, which finds similar products "
                              f"(tailor similar RUN IMAGE --model {path}), and does not classify")

    def prepare(self, path: str | Path) -> np.ndarray:
        """The model's float32 input (3, size, size) for one image file."""
        size = self.info.size
        rgb = Image.fromarray(decode_rgb(path, max_side=DECODE_SIDE))
        if rgb.size != (size, size):
            rgb = rgb.resize((size, size), Image.BILINEAR)
        array = np.asarray(rgb, dtype=np.float32) / 255.0
        array = (array - np.asarray(self.info.mean, np.float32)) / np.asarray(self.info.std, np.float32)
        return array.transpose(2, 0, 1)

    def predict_files(self, paths: Sequence[Path], k: int = 5, batch_size: int = 32, progress: bool = False
                      ) -> Iterator[Prediction | AttributePrediction | ImageError]:
        """Top-``k`` predictions per file, in order; an unreadable file yields its :class:`ImageError`."""
        bar = tqdm(total=len(paths), desc="predicting", unit="img", disable=not progress, leave=False)
        for start in range(0, len(paths), batch_size):
            part = list(paths[start:start + batch_size])
            inputs, errors = [], {}
            for i, path in enumerate(part):
                try:
                    inputs.append(self.prepare(path))
                except ImageError as err:
                    errors[i] = err
            outputs = self.session.run(np.stack(inputs)) if inputs else {}
            bar.update(len(part))
            row = 0
            for i, path in enumerate(part):
                if i in errors:
                    yield errors[i]
                    continue
                yield self._ranked(str(path), {name: values[row] for name, values in outputs.items()}, k)
                row += 1
        bar.close()

    def _ranked(self, path: str, rows: dict[str, np.ndarray], k: int) -> Prediction | AttributePrediction:
        if self.info.kind == "attributes":
            return AttributePrediction(path, {
                name: Prediction(path, *top_labels(rows[name], classes, min(k, len(classes))))
                for name, classes in self.info.outputs.items()})
        classes = self.info.classes
        return Prediction(path, *top_labels(next(iter(rows.values())), classes, min(k, len(classes))))
