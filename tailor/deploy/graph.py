"""A trained torch model as the graph an export holds: its inference computation — softmax (averaged with
the mirror image's), every attribute's probabilities, or the unit-length embedding — traced by
``torch.onnx`` into one ONNX graph with a dynamic batch size.

An ensemble becomes one graph that averages its members, not one graph per member with a manifest: a serving
stack then loads one file and makes one call, and the members' shared input and the averaging cannot be
wired up wrongly downstream. ONNX Runtime runs the members one after the other either way.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tailor.deploy.onnx_file import INPUT_NAME, ExportError, ExportInfo, quiet_logs
from tailor.models.kinds import kind_of_module
from tailor.models.registry import KIND_NAMES

log = logging.getLogger(__name__)

#: ONNX opset of the exported graphs (Resize with antialias, as an ensemble's larger members need, is 18+)
OPSET = 18


class InferenceGraph(nn.Module):
    """What ``tailor predict`` / ``similar`` compute from a batch of input tensors, as one module to trace."""

    def __init__(self, model: nn.Module, kind: str, tta: bool = True):
        super().__init__()
        self.model, self.kind, self.tta = model.eval(), kind, tta
        self.attributes = list(getattr(model, "head_classes", {}))

    def forward(self, images: torch.Tensor):
        n = images.shape[0]
        # the mirror images ride in the same batch: one pass through the network, whose weights the graph
        # then holds once (two calls would give int8 quantisation two copies of every folded weight)
        out = self.model(torch.cat([images, images.flip(-1)]) if self.tta else images)
        if self.kind == "classifier":
            return _mean_of_views(out.softmax(dim=1), n, self.tta)
        if self.kind == "attributes":
            return tuple(_mean_of_views(out[a].softmax(dim=1), n, self.tta) for a in self.attributes)
        return F.normalize(_mean_of_views(out, n, self.tta), dim=-1)


def _mean_of_views(values: torch.Tensor, n: int, tta: bool) -> torch.Tensor:
    return 0.5 * (values[:n] + values[n:]) if tta else values


@dataclass
class Traced:
    """An exported graph (``onnx.ModelProto``) and the description that goes with it."""

    model: object
    info: ExportInfo


def model_kind(model: nn.Module) -> str:
    """What ``model``'s graph outputs, from the table of kinds."""
    kind = kind_of_module(model)
    if kind is None:
        raise ExportError(f"cannot export a {type(model).__name__}: not a kind of model tailor makes "
                          f"({', '.join(KIND_NAMES)})")
    return kind.output


def describe(model: nn.Module, tta: bool = True, source: str = "") -> ExportInfo:
    """The :class:`ExportInfo` of ``model`` exported in fp32."""
    kind = model_kind(model)
    if kind == "classifier":
        outputs = {"probabilities": list(model.classes)}
    elif kind == "attributes":
        outputs = {a: list(c) for a, c in model.head_classes.items()}
    else:
        outputs = {"embedding": []}
    return ExportInfo(kind=kind, outputs=outputs, size=int(model.image_size), mean=list(model.data_config["mean"]),
                      std=list(model.data_config["std"]), tta=tta, backbone=model.backbone_name, source=source)


def trace(model: nn.Module, tta: bool = True, source: str = "") -> Traced:
    """``model``'s inference graph in ONNX (fp32, on the CPU), and its description."""
    info = describe(model, tta, source)
    graph = InferenceGraph(model.cpu().float().eval(), info.kind, tta)
    example = torch.zeros(2, 3, info.size, info.size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad(), \
            quiet_logs("onnxscript", "onnx_ir", "torch.onnx"):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(graph, (example,), dynamo=True, external_data=False, opset_version=OPSET,
                                    input_names=[INPUT_NAME], output_names=list(info.outputs),
                                    dynamic_shapes={"images": {0: batch}}, verbose=False)
    return Traced(program.model_proto, info)
