"""int8 post-training static quantisation of an exported graph with ONNX Runtime's tools.

Weights are quantised per output channel (int8), activations per tensor (uint8), in the QDQ format that
ONNX Runtime fuses into integer kernels (VNNI on recent x86 CPUs). The activation ranges come from
calibration: a few hundred of the run's own training images, picked seeded and stratified by class, so the
ranges cover what the model will see. The graph is first prepared by ``quant_pre_process`` (shape inference,
batch-norm folded into the convolutions), without which the folded weights could not be quantised as one.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
import torch

from tailor.deploy.onnx_file import INPUT_NAME, ExportError, quiet_logs

log = logging.getLogger(__name__)


def calibration_rows(frame: pd.DataFrame, count: int = 256, seed: int = 0) -> pd.DataFrame:
    """``count`` rows of ``frame`` (or all of them, if fewer), each class represented in proportion (at least
    one row each while the count allows), picked with ``seed``."""
    if len(frame) <= count:
        return frame
    rng = np.random.default_rng(seed)
    shares = frame["label"].value_counts()
    quota = np.maximum(1, np.floor(shares / len(frame) * count)).astype(int)
    picked = []
    for label, rows in frame.groupby("label", sort=True).indices.items():
        picked += list(rng.choice(rows, size=min(len(rows), int(quota[label])), replace=False))
    picked = sorted(picked)[:count] if len(picked) > count else picked
    return frame.iloc[sorted(picked)]


class _Batches:
    """ONNX Runtime's calibration reader protocol (``get_next`` → an input dict, or None when done), with the
    ``len``/``set_range`` of its strided calibration: ranges are then folded in batch by batch, where the
    calibrator otherwise keeps every activation of every batch (an ensemble's took more than 24 GB)."""

    def __init__(self, batches: Sequence[torch.Tensor]):
        self.batches = list(batches)
        self.set_range(0, len(self.batches))

    def __len__(self) -> int:
        return len(self.batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.pending: Iterator[torch.Tensor] = iter(self.batches[start_index:end_index])

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self.pending, None)
        return None if batch is None else {INPUT_NAME: batch.numpy()}


@dataclass(frozen=True)
class Int8Settings:
    """How the int8 copy is calibrated (bound as ``export.quantize_int8.*``).

    ``method``: ``minmax`` (the ranges seen), ``percentile`` (clips the rarest 0.01 %) or ``entropy``.
    ``exclude_first_conv``: keep the first convolution in fp32. ``symmetric_activations``: activations
    quantised around zero.
    """

    method: str = "minmax"
    exclude_first_conv: bool = False
    symmetric_activations: bool = False


def quantize_int8(fp32_file: str | Path, out_file: str | Path, batches: Sequence[torch.Tensor],
                  settings: Int8Settings | None = None):
    """An int8 copy of the fp32 graph in ``fp32_file``, calibrated on ``batches`` (input tensors) as
    ``settings`` say (:class:`Int8Settings`), as an ``onnx.ModelProto``; ``out_file`` receives the bare
    quantised graph."""
    settings = settings or Int8Settings()
    method = settings.method
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    if method not in methods:
        raise ExportError(f"export.quantize_int8.method must be one of {', '.join(methods)}, got {method!r}")
    with tempfile.TemporaryDirectory(prefix="tailor-quantize-") as work:
        prepared = Path(work) / "prepared.onnx"
        quant_pre_process(str(fp32_file), str(prepared), skip_symbolic_shape=True)
        exclude = []
        if settings.exclude_first_conv:
            graph = onnx.load(str(prepared)).graph
            exclude = [next(n.name for n in graph.node if n.op_type == "Conv")]
        with quiet_logs("root"):  # ONNX Runtime's quantiser logs every rescaled weight on the root logger
            quantize_static(str(prepared), str(out_file), _Batches(batches), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=methods[method], nodes_to_exclude=exclude,
                            extra_options={"ActivationSymmetric": settings.symmetric_activations,
                                           "CalibStridedMinMax": 1})
    return onnx.load(str(out_file))
