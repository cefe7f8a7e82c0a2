"""The exported model file: one ONNX file that carries everything inference needs, checked before it runs.

Beside the graph, the file's metadata (``metadata_props``, readable by any ONNX tool) holds:

- ``tailor.format``: ``tailor.onnx/1``;
- ``tailor.info``: JSON of :class:`ExportInfo` — the kind of model, each output's class names, the input size
  and normalisation, whether the mirror-image average (TTA) is inside the graph, the precision, and what the
  export measured;
- ``tailor.graph_sha256``: the SHA-256 of the serialised graph. A file whose graph was changed or cut short
  after export is refused with one line instead of running with damaged weights.

The input is ``images``: float32 ``(N, 3, size, size)``, resized to ``size`` and normalised by ``mean``/``std``
(what :func:`tailor.data.transforms.eval_transform` gives). Outputs are probabilities (a classifier: one
output; a multi-attribute model: one per attribute, named after it) or unit-length embeddings.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from tailor.data.data_config import DataConfig
from tailor.files import atomic_write
from tailor.models.kinds import OUTPUTS

EXPORT_FORMAT = "tailor.onnx/1"
INPUT_NAME = "images"
KINDS = OUTPUTS  # an exported graph is of the kind its model outputs


class ExportError(ValueError):
    """A model that cannot be exported, or an exported file that is damaged, foreign or unusable."""


@dataclass
class ExportInfo:
    """What an exported graph computes and how to feed it."""

    kind: str  # one of KINDS
    outputs: dict[str, list[str]]  # output name → class names (an embedding's output: [])
    size: int
    mean: list[float]
    std: list[float]
    tta: bool  # the graph averages each image with its mirror image
    precision: str = "fp32"  # or "int8"
    backbone: str | list[str] = ""
    source: str = ""  # the model file it was exported from
    measured: dict = field(default_factory=dict)  # accuracy against the torch model, filled in by the export

    @property
    def data_config(self) -> DataConfig:
        return DataConfig(self.size, tuple(self.mean), tuple(self.std))

    @property
    def classes(self) -> list[str]:
        """A classifier's classes (its one output's)."""
        return next(iter(self.outputs.values()))


@contextlib.contextmanager
def quiet_logs(*names: str):
    """Only warnings from the loggers ``names`` (``'root'``: the root logger) while the block runs: the ONNX
    tools log every step at INFO, which would bury the command's own output."""
    loggers = [logging.getLogger(None if name == "root" else name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(max(logging.WARNING, logger.level))
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def graph_digest(model) -> str:
    return hashlib.sha256(model.graph.SerializeToString()).hexdigest()


def write_export(model, info: ExportInfo, path: str | Path) -> Path:
    """Write ``model`` (an ``onnx.ModelProto``) with ``info`` and its graph's digest, atomically, as one file."""
    keep = {p.key: p.value for p in model.metadata_props if not p.key.startswith("tailor.")}
    del model.metadata_props[:]
    entries = {**keep, "tailor.format": EXPORT_FORMAT, "tailor.info": json.dumps(asdict(info)),
               "tailor.graph_sha256": graph_digest(model)}
    for key, value in entries.items():
        model.metadata_props.add(key=key, value=value)
    model.producer_name = "tailor"
    atomic_write(path, lambda f: f.write(model.SerializeToString()))
    return Path(path)


def is_export_file(path: str | Path) -> bool:
    """Whether ``path`` names an exported model (by its suffix: the contents are checked when it is read)."""
    return Path(path).suffix.lower() == ".onnx"


def read_export(path: str | Path):
    """The ``onnx.ModelProto`` and :class:`ExportInfo` of an exported file, after checking that it is whole,
    unchanged since export, and a tailor export; :class:`ExportError` (one line) otherwise."""
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: no such exported model")
    try:
        model = onnx.load_model_from_string(path.read_bytes())
    except (DecodeError, ValueError, RuntimeError) as err:
        raise ExportError(f"{path}: not a readable ONNX file (damaged or cut short: {str(err)[:120]})") from None
    meta = {p.key: p.value for p in model.metadata_props}
    if meta.get("tailor.format") != EXPORT_FORMAT:
        found = meta.get("tailor.format")
        raise ExportError(f"{path}: not a tailor export ({'format ' + repr(found) if found else 'no tailor metadata'};"
                          f" make one with `tailor export RUN OUT.onnx`)")
    if graph_digest(model) != meta.get("tailor.graph_sha256"):
        raise ExportError(f"{path}: refused — its graph changed after export (checksum mismatch): a damaged or "
                          f"tampered file; export the run again")
    try:
        info = ExportInfo(**json.loads(meta["tailor.info"]))
    except (KeyError, TypeError, ValueError) as err:
        raise ExportError(f"{path}: unreadable tailor.info metadata ({err})") from None
    if info.kind not in KINDS:
        raise ExportError(f"{path}: unknown kind of model {info.kind!r} (this version knows {', '.join(KINDS)})")
    return model, info


class OnnxSession:
    """An exported model in an ONNX Runtime session, fed NumPy arrays (:meth:`run`). ``threads``: ONNX
    Runtime's intra-op threads (0: one per core). ``device``: anything with torch.device's ``type`` and
    ``index`` ('cuda' uses ONNX Runtime's CUDA provider where it has one)."""

    def __init__(self, path: str | Path, threads: int = 0, device=None):
        model, self.info = read_export(path)
        self.path = Path(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # 0: one per core
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = ["CPUExecutionProvider"]
        if device is not None and device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
        try:
            self.session = ort.InferenceSession(model.SerializeToString(), options, providers=providers)
        except Exception as err:  # ORT raises its own types for graphs it cannot run
            raise ExportError(f"{path}: ONNX Runtime cannot run it ({str(err).splitlines()[0][:200]})") from None
        self.output_names = [o.name for o in self.session.get_outputs()]
        if set(self.output_names) != set(self.info.outputs):
            raise ExportError(f"{path}: its outputs {self.output_names} do not match its metadata "
                              f"{list(self.info.outputs)}")

    @property
    def classes(self) -> list[str]:
        return self.info.classes

    @property
    def image_size(self) -> int:
        return self.info.size

    @property
    def data_config(self) -> dict:
        """The input the graph expects, as timm describes a backbone's (what the predictors read)."""
        return {"input_size": (3, self.info.size, self.info.size), "mean": tuple(self.info.mean),
                "std": tuple(self.info.std)}

    @property
    def head_classes(self) -> dict[str, list[str]]:
        return dict(self.info.outputs)

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Every output for a float32 batch, by name."""
        values = self.session.run(self.output_names, {INPUT_NAME: np.ascontiguousarray(images, dtype=np.float32)})
        return dict(zip(self.output_names, values))
