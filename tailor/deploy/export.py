"""``tailor export``: a trained run (or model file) to one ONNX file, in fp32 or int8, with what the export
measured against the torch model written into the file and printed.

The measurement compares the exported model with the torch model it came from on held-out images: the run's
test split when its results name one (else training rows the calibration did not use): top-1 of both (per
attribute for a multi-attribute model), how often their top-1 agree, and the largest probability difference;
for an embedding model, the cosine similarity of their embeddings.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from tailor import run_folder
from tailor.data.attributes import attribute_values
from tailor.data.datasets import FashionDataset
from tailor.data.transforms import eval_transform
from tailor.deploy.exported import OnnxModel
from tailor.deploy.onnx_file import ExportError, ExportInfo, write_export
from tailor.deploy.graph import InferenceGraph, trace
from tailor.deploy.quantize import Int8Settings, calibration_rows, quantize_int8
from tailor.distributed import Runtime
from tailor.inference import find_model_file, load_predictor
from tailor.models.registry import load_model, model_output
from tailor.models.features import run_pass
from tailor.models.files import load_model_file
from tailor.runtime import prepare_model

log = logging.getLogger(__name__)


def load_torch_model(model_file: Path, runtime: Runtime | None = None) -> nn.Module:
    """The trained model in ``model_file``, of any kind; a classifier with the categories enrolled into it
    (loaded on ``runtime``'s device)."""
    saved = load_model_file(model_file)  # read once: it says the kind and holds the weights
    if model_output(saved) == "embedding":
        return load_model(model_file, saved)
    return load_predictor(model_file, saved, runtime).model


def training_data(run_dir: Path) -> run_folder.DataSource | None:
    """The training table and image root a run was started with (None: it names none)."""
    source = run_folder.RunFolder(run_dir).training_source()
    return source if source is not None and source.csv_file is not None else None


def test_data(run_dir: Path) -> run_folder.DataSource | None:
    """The test split a run was evaluated on."""
    source = run_folder.RunFolder(run_dir).test_source()
    return source if source is not None and source.csv_file is not None else None


def _images(source: run_folder.DataSource, frame: pd.DataFrame | None, info: ExportInfo):
    spec = FashionDataset(source.root, source.csv_file, source.label_column, in_memory=True)
    return spec.load(None, eval_transform(info.data_config), frame=frame, progress=False)


def _batches(dataset, batch_size: int = 16) -> list[torch.Tensor]:
    items = [dataset[i][0] for i in range(len(dataset))]
    return [torch.stack(items[i:i + batch_size]) for i in range(0, len(items), batch_size)]


def export_model(run_or_model: str | Path, out: str | Path, quantize: str | None = None,
                 calibration: run_folder.DataSource | None = None, calibration_images: int = 256, seed: int = 0,
                 tta: bool = True, check_images: int = 512, device: str | torch.device = "auto",
                 int8: Int8Settings | None = None) -> ExportInfo:
    """Export ``run_or_model`` to ``out`` (``.onnx``); with ``quantize='int8'``, calibrated on
    ``calibration_images`` training images (``calibration``, else the run's own training table), as ``int8``
    says (:class:`~tailor.deploy.quantize.Int8Settings`). The export is
    checked against the torch model run on ``device``. Returns what was written, with the measurements."""
    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise ExportError(f"{out}: an exported model is one .onnx file; name it so")
    if quantize not in (None, "int8"):
        raise ExportError(f"--quantize {quantize}: only int8 is supported")
    model_file = find_model_file(run_or_model)
    run_dir = model_file.parent
    calibration = calibration or training_data(run_dir)
    used = None
    if quantize:  # the calibration table is read before any tracing: a wrong one is a quick error
        if calibration is None:
            raise ExportError(f"{run_dir}: no training table to calibrate int8 on (no config.gin naming "
                              f"FashionDataset.csv_file); pass --calibration CSV")
        frame = FashionDataset(calibration.root, calibration.csv_file, calibration.label_column).catalog().frame
        used = calibration_rows(frame, calibration_images, seed)
    runtime = Runtime.local(device)
    model = load_torch_model(model_file, runtime)
    log.info("tracing %s into ONNX…", model_file)
    traced = trace(model, tta, source=str(model_file))
    info = traced.info
    with tempfile.TemporaryDirectory(prefix="tailor-export-") as work:
        fp32_file = Path(work) / "fp32.onnx"
        write_export(traced.model, info, fp32_file)
        graph = traced.model
        if quantize:
            log.info("calibrating int8 on %d images of %s", len(used), calibration.csv_file)
            graph = quantize_int8(fp32_file, Path(work) / "int8.onnx", _batches(_images(calibration, used, info)),
                                 int8)
            info.precision = "int8"
            info.measured["calibration"] = {"csv": str(calibration.csv_file), "images": len(used), "seed": seed}
        write_export(graph, info, out)  # written before it is measured: a failed check never loses it
    check = _check_data(run_dir, calibration, used, check_images, seed)
    if check is not None:
        info.measured.update(compare(model, OnnxModel(out), _images(check[0], check[1], info), info, runtime))
        info.measured["checked_on"] = {"csv": str(check[0].csv_file), "images": int(len(check[1]))}
        write_export(_reload(out), info, out)
    return info


def _reload(path: Path):
    import onnx

    return onnx.load(str(path))


def _check_data(run_dir: Path, calibration: run_folder.DataSource | None, used: pd.DataFrame | None, count: int, seed: int
                ) -> tuple[run_folder.DataSource, pd.DataFrame] | None:
    """Held-out images to compare the export with the torch model on: the run's test split, else training rows
    the calibration did not use."""
    source = test_data(run_dir) or calibration
    if source is None:
        return None
    try:
        frame = FashionDataset(source.root, source.csv_file, source.label_column).catalog().frame
    except (FileNotFoundError, ValueError) as err:
        log.warning("not checking the export: %s", err)
        return None
    if used is not None and source == calibration:
        frame = frame.drop(index=used.index, errors="ignore")
    if len(frame) > count:
        frame = frame.sample(n=count, random_state=seed).sort_index()
    return (source, frame) if len(frame) else None


def compare(model: nn.Module, exported: OnnxModel, dataset, info: ExportInfo, runtime: Runtime | None = None) -> dict:
    """The exported model beside the torch model (on ``runtime``) on ``dataset``: accuracy, agreement,
    largest difference."""
    runtime = runtime or Runtime.local()
    graph = InferenceGraph(prepare_model(model, runtime.device), info.kind, info.tta)
    torch_fn = (lambda x: dict(zip(info.outputs, graph(x)))) if info.kind == "attributes" else graph
    reference = run_pass(torch_fn, dataset, batch_size=32, progress=False, desc="torch", runtime=runtime).outputs
    outputs = run_pass(exported, dataset, batch_size=32, progress=False, desc="exported", runtime=runtime).outputs
    if info.kind == "embedding":
        cosine = (reference * outputs).sum(-1)
        return {"cosine_mean": round(float(cosine.mean()), 5), "cosine_min": round(float(cosine.min()), 5)}
    if info.kind == "classifier":
        reference, outputs = {"probabilities": reference}, {"probabilities": outputs}
    labels = dataset.frame
    measured = {}
    for name, classes in info.outputs.items():
        truth = _truth(labels, name, info.kind, classes)
        ref, out = reference[name].numpy(), outputs[name].numpy()
        known = truth >= 0
        measured[name] = {
            "torch_top1": round(float((ref.argmax(1) == truth)[known].mean()), 4) if known.any() else None,
            "export_top1": round(float((out.argmax(1) == truth)[known].mean()), 4) if known.any() else None,
            "top1_agreement": round(float((ref.argmax(1) == out.argmax(1)).mean()), 4),
            "max_abs_difference": float(np.abs(ref - out).max()),
        }
    return measured if info.kind == "attributes" else measured["probabilities"]


def _truth(frame: pd.DataFrame, output: str, kind: str, classes: list[str]) -> np.ndarray:
    """Each row's class index for ``output`` (-1: none of ``classes``, or no value)."""
    column = attribute_values(frame, output) if kind == "attributes" and output in frame else frame["label"]
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index.get(v, -1) for v in column], dtype=np.int64)
