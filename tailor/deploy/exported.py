"""An exported model as torch code calls it: :class:`OnnxModel`, an ONNX Runtime session (the file format and its
checks are :mod:`tailor.deploy.onnx_file`, which needs no torch) called on a batch of tensors like the torch
models are."""

from __future__ import annotations

import torch

from tailor.deploy.onnx_file import OnnxSession


class OnnxModel(OnnxSession):
    """An exported model in an ONNX Runtime session: call it on a batch of input tensors (as the torch models
    are called) to get a tensor — or, for a multi-attribute model, a dict of tensors by attribute."""

    def __call__(self, images: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        out = {name: torch.from_numpy(v) for name, v in self.run(images.detach().cpu().float().numpy()).items()}
        return out if self.info.kind == "attributes" else next(iter(out.values()))
