"""tailor export: every kind of model to one ONNX file that ONNX Runtime runs like the torch model (fp32 to 1e-4,
int8 within a stated tolerance), that predict and similar accept, and that is refused whole when damaged."""

from pathlib import Path

import pytest
import torch

from conftest import run_tailor
from tailor.data.datasets import FashionDataset
from tailor.data.transforms import eval_transform
from tailor.deploy.exported import OnnxModel
from tailor.deploy.onnx_file import ExportError, read_export, write_export
from tailor.deploy.graph import InferenceGraph, trace
from tailor.models.embedding import EmbeddingNet
from tailor.models.ensemble import EnsembleNet
from tailor.models.heads import TransferNet
from tailor.models.multitask import MultiTaskNet

PROBE_CONFIG = """
main.method = 'transfer'
main.num_epochs = 0
main.seed = 0
main.output_dir = '{out}'
FashionDataset.root_dir = '{root}'
FashionDataset.csv_file = '{root}/styles.csv'
evaluate/FashionDataset.csv_file = '{root}/styles.csv'
TransferNet.image_size = 96
TransferNet.backbone = 'efficientnet_lite0'
make_trainer.progress = False
"""


@pytest.fixture(scope="module")
def probe_run(tiny_dataset, tmp_path_factory) -> Path:
    """A linear probe on EfficientNet-Lite0 (ImageNet weights) over three real categories."""
    work = tmp_path_factory.mktemp("export")
    config = work / "probe.gin"
    config.write_text(PROBE_CONFIG.format(root=tiny_dataset, out=work / "experiments"))
    result = run_tailor("run", "-c", str(config), "-p", "main.name='probe'", cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]
    return work / "experiments" / "probe"


@pytest.fixture(scope="module")
def probe_fp32(probe_run, tmp_path_factory) -> tuple[Path, str]:
    """``tailor export`` of the probe run in fp32: the file, and what the command printed."""
    fp32 = tmp_path_factory.mktemp("fp32") / "probe.onnx"
    result = run_tailor("export", str(probe_run), str(fp32))
    assert result.returncode == 0, result.stderr[-3000:]
    return fp32, result.stdout


def real_batch(root: Path, size: int, mean=(0.5,) * 3, std=(0.5,) * 3) -> torch.Tensor:
    from tailor.data.transforms import DataConfig

    data = FashionDataset(root, root / "styles.csv", in_memory=True).load(
        None, eval_transform(DataConfig(size, mean, std)), progress=False)
    return torch.stack([data[i][0] for i in range(len(data))])


def export_and_run(model: torch.nn.Module, images: torch.Tensor, path: Path):
    """The torch model's and its fp32 export's outputs on ``images``, and the export's metadata."""
    traced = trace(model)
    write_export(traced.model, traced.info, path)
    exported = OnnxModel(path)
    with torch.no_grad():
        expected = InferenceGraph(model, traced.info.kind)(images)
    return expected, exported(images), exported.info


#: timm's small test network of the EfficientNet family (depthwise convolutions, squeeze-excitation): the
#: tests of the export machinery trace it in a third of EfficientNet-Lite0's time (the runs' exports use Lite0)
SMALL = "test_efficientnet"


def test_fp32_exports_of_every_kind_compute_what_the_torch_model_does(tiny_dataset, tmp_path):
    torch.manual_seed(0)
    images = real_batch(tiny_dataset, 40)[:8]
    single = TransferNet(["Watches", "Sunglasses", "Tshirts"], backbone=SMALL, pretrained=False, image_size=40).eval()
    expected, got, info = export_and_run(single, images, tmp_path / "single.onnx")
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    assert info.kind == "classifier" and info.classes == ["Watches", "Sunglasses", "Tshirts"] and info.tta
    assert info.size == 40 and info.mean == pytest.approx(list(single.data_config["mean"]))  # the backbone's own

    # an ensemble is one graph: its larger member sees the batch resized inside it, as in torch
    members = [TransferNet(["a", "b"], backbone=SMALL, pretrained=False, image_size=s).eval() for s in (40, 48)]
    expected, got, info = export_and_run(EnsembleNet(members).eval(), images, tmp_path / "ensemble.onnx")
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    assert info.backbone == [SMALL, SMALL]

    heads = {"articleType": ["Watches", "Sunglasses", "Tshirts"], "gender": ["Men", "Women"]}
    attributes = MultiTaskNet(heads, backbone=SMALL, pretrained=False, image_size=40).eval()
    expected, got, info = export_and_run(attributes, images, tmp_path / "attributes.onnx")
    assert info.kind == "attributes" and info.outputs == heads
    for i, name in enumerate(heads):
        torch.testing.assert_close(got[name], expected[i], atol=1e-4, rtol=0)

    embedding = EmbeddingNet(SMALL, pretrained=False, image_size=40, projection={"dim": 16, "hidden": 0}).eval()
    expected, got, info = export_and_run(embedding, images, tmp_path / "embedding.onnx")
    assert info.kind == "embedding" and got.shape == (8, 16)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(got.norm(dim=1), torch.ones(8), atol=1e-5, rtol=0)


def test_damaged_tampered_or_foreign_files_are_refused_with_one_line(tiny_dataset, tmp_path):
    model = TransferNet(["a", "b"], backbone=SMALL, pretrained=False, image_size=32).eval()
    traced = trace(model)
    good = write_export(traced.model, traced.info, tmp_path / "good.onnx")
    data = good.read_bytes()
    read_export(good)  # whole: accepted

    (tmp_path / "cut.onnx").write_bytes(data[: len(data) * 2 // 3])
    tampered = bytearray(data)
    weights = max(traced.model.graph.initializer, key=lambda t: len(t.raw_data)).raw_data
    at = bytes(data).find(weights[:64]) + len(weights) // 2
    tampered[at] ^= 0xFF
    (tmp_path / "tampered.onnx").write_bytes(bytes(tampered))
    foreign = traced.model
    del foreign.metadata_props[:]
    (tmp_path / "foreign.onnx").write_bytes(foreign.SerializeToString())
    for name, reason in (("cut.onnx", "not a readable ONNX file|changed after export"),
                         ("tampered.onnx", "changed after export"), ("foreign.onnx", "not a tailor export"),
                         ("missing.onnx", "no such exported model")):
        with pytest.raises(ExportError, match=reason):
            read_export(tmp_path / name)
        image = next((tiny_dataset / "images").iterdir())
        result = run_tailor("predict", str(tmp_path / name), str(image))
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert name in result.stderr


def test_export_of_a_run_that_does_not_exist_is_one_line(tmp_path):
    result = run_tailor("export", str(tmp_path / "no-run"), str(tmp_path / "out.onnx"))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "no trained model here" in result.stderr and not (tmp_path / "out.onnx").exists()


def test_a_missing_calibration_table_fails_before_tracing(tmp_path, caplog):
    import logging

    from tailor.deploy.export import export_model
    from tailor.run_folder import DataSource

    run = tmp_path / "run"
    run.mkdir()
    torch.save(TransferNet(["a", "b"], pretrained=False, image_size=32).export(), run / "model.pt")
    with caplog.at_level(logging.INFO), pytest.raises(ValueError, match="no-such.csv"):
        export_model(run, tmp_path / "out.onnx", quantize="int8",
                     calibration=DataSource(tmp_path / "no-such.csv", tmp_path))
    assert "tracing" not in caplog.text and not (tmp_path / "out.onnx").exists()


@pytest.mark.slow
def test_a_run_exports_in_fp32_and_int8_and_predict_takes_either(probe_run, probe_fp32, tiny_dataset, tmp_path):
    (fp32, printed), int8 = probe_fp32, tmp_path / "probe-int8.onnx"
    assert "same top-1 on 100.0%" in printed, printed
    result = run_tailor("export", str(probe_run), str(int8), "--quantize", "int8", "--calibration-images", "12")
    assert result.returncode == 0, result.stderr[-3000:]
    # this run's test table is its training table: the check leaves out the 12 calibration images
    assert "int8" in result.stdout and "checked against the torch model on 24 images" in result.stdout
    assert len(result.stderr.splitlines()) < 10, result.stderr  # the ONNX tools' INFO logs are kept quiet

    _, info = read_export(int8)
    assert info.precision == "int8" and info.measured["calibration"]["images"] == 12
    # int8 keeps the probe's decisions: at most 1 of the 24 images changes its top-1 (stated tolerance)
    assert info.measured["top1_agreement"] >= 23 / 24
    assert abs(info.measured["export_top1"] - info.measured["torch_top1"]) <= 1 / 24 + 1e-9
    assert int8.stat().st_size < fp32.stat().st_size / 2  # int8 weights: a quarter of the bytes, plus scales

    images = sorted((tiny_dataset / "images").iterdir())[:6]
    answers = {}
    for model in (probe_run, fp32, int8):
        out = tmp_path / f"{Path(model).stem}.csv"
        result = run_tailor("predict", str(model), *map(str, images), "--csv", str(out))
        assert result.returncode == 0, result.stderr[-3000:]
        answers[model] = out.read_text().splitlines()
    top1 = {m: [line.split(",")[1] for line in rows[1:]] for m, rows in answers.items()}
    assert top1[fp32] == top1[probe_run]
    assert sum(a == b for a, b in zip(top1[int8], top1[probe_run])) >= 5

    refused = run_tailor("enroll", str(fp32), "--class", "New", str(images[0]))
    assert refused.returncode == 2 and "exported model is fixed" in refused.stderr


def test_an_exported_model_predicts_without_torch_as_the_run_does(probe_run, probe_fp32, tiny_dataset):
    """`tailor predict MODEL.onnx` prepares images with Pillow and NumPy and runs ONNX Runtime alone: it never
    imports torch, and gives the run's probabilities (the same decoding; Pillow's antialiased resize for
    torchvision's)."""
    import subprocess
    import sys

    import tailor
    from tailor.deploy.onnx_predict import ExportedPredictor

    onnx_file = probe_fp32[0]  # `tailor export`'s file; Model.export's is tested in test_api.py
    images = sorted((tiny_dataset / "images").iterdir())
    fast = list(ExportedPredictor(onnx_file, device="cpu").predict_files(images, k=3))
    torch_side = tailor.load(probe_run).predict_proba(images)
    for prediction, (_, row) in zip(fast, torch_side.iterrows()):
        assert prediction.labels[0] == row.idxmax()
        for label, score in zip(prediction.labels, prediction.scores):
            assert score == pytest.approx(row[label], abs=0.01)
    code = (f"import sys; from tailor.cli import main; code = main(['predict', {str(onnx_file)!r}, "
            f"{str(images[0])!r}]); assert 'torch' not in sys.modules, 'torch was imported'; sys.exit(code)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert fast[0].labels[0] in result.stdout.splitlines()[1]


def test_the_session_threads_binding_reaches_onnx_runtime(probe_fp32, tiny_dataset, monkeypatch):
    """`-p onnx.session_threads.threads=1` is resolved by the command and passed to the session it opens
    (0, the default: one thread per core)."""
    import onnxruntime as ort

    asked = []
    opened = ort.InferenceSession.__init__

    def spy(self, path, sess_options=None, *args, **kwargs):
        asked.append(sess_options.intra_op_num_threads)
        opened(self, path, sess_options, *args, **kwargs)

    monkeypatch.setattr(ort.InferenceSession, "__init__", spy)
    image = str(sorted((tiny_dataset / "images").iterdir())[0])
    for binding in ([], ["-p", "onnx.session_threads.threads=1"]):
        result = run_tailor("predict", str(probe_fp32[0]), image, *binding)
        assert result.returncode == 0, result.stderr[-2000:]
    assert asked == [0, 1]
