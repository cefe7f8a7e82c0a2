"""The transfer pipeline as a user runs it: train, evaluate, fine-tune, predict, resume — on tiny real images."""

import json
import re
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import assert_same_curves, evaluate_saved_model, kill_after_first_epoch, run_tailor
from tailor.tasks.calibration import calibration_settings

TINY_CONFIG = """
main.method = 'transfer'
main.num_epochs = {epochs}
main.seed = 3
main.output_dir = '{out}'
FashionDataset.root_dir = '{root}'
FashionDataset.csv_file = '{root}/styles.csv'
evaluate/FashionDataset.csv_file = '{root}/styles.csv'
TransferNet.image_size = 32
TransferNet.backbone = 'efficientnet_lite0'
ClassificationTask.optimizer = @torch.optim.AdamW
torch.optim.AdamW.lr = 1e-3
transfer.batch_size = 6
transfer.val_fraction = 0.2
make_trainer.progress = False
"""


def write_config(path: Path, root: Path, out: Path, epochs: int = 2) -> Path:
    path.write_text(TINY_CONFIG.format(root=root, out=out, epochs=epochs))
    return path


@pytest.fixture(scope="module")
def trained_run(tiny_dataset, tmp_path_factory):
    """One tiny training run shared by the tests that only read its artifacts."""
    work = tmp_path_factory.mktemp("run")
    config = write_config(work / "tiny.gin", tiny_dataset, work / "experiments")
    result = run_tailor("run", "-c", str(config), "-p", "main.name='tiny'", cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]
    return work / "experiments" / "tiny", result


def test_training_writes_every_artifact(trained_run):
    run_dir, result = trained_run
    for name in ("config.gin", "operative_config.gin", "model.pt", "metrics.csv", "curves.png", "results.json",
                 "per_class.md", "per_class.csv", "confusion.png", "mistakes.csv", "report.html", "checkpoints/best.ckpt",
                 "checkpoints/last.ckpt"):
        assert (run_dir / name).is_file(), name
    results = json.loads((run_dir / "results.json").read_text())
    assert {"top1", "top5", "per_class", "num_test", "best_step", "best_val_acc", "seed"} <= set(results)
    assert results["num_test"] == 36 and len(results["per_class"]) == 3
    assert 0.0 <= results["top1"] <= results["top5"] <= 1.0
    assert results["top5"] == 1.0  # three classes: the true one is always in the top 5
    assert "top-1" in result.stdout and "| Class |" in result.stdout
    metrics = pd.read_csv(run_dir / "metrics.csv")
    assert {"train/loss", "val/acc", "step"} <= set(metrics.columns)
    assert metrics["val/acc"].notna().sum() == 2  # validated once per epoch


def test_model_file_is_weights_only_and_complete(trained_run):
    run_dir, _ = trained_run
    saved = torch.load(run_dir / "model.pt", weights_only=True)
    assert saved["classes"] == ["Sunglasses", "Tshirts", "Watches"]
    assert saved["backbone"] == "efficientnet_lite0" and saved["image_size"] == 32
    assert sum(saved["train_counts"].values()) < 36  # validation images held out


def test_seed_style_overrides_reach_the_operative_config(tiny_dataset, tmp_path):
    config = write_config(tmp_path / "tiny.gin", tiny_dataset, tmp_path / "experiments", epochs=1)
    result = run_tailor("run", "-c", str(config), "-p", "main.num_epochs=1",
                        "-p", "ClassificationTask.optimizer=@torch.optim.Adam", "-p", "torch.optim.Adam.lr=5e-4",
                        "-p", "make_trainer.max_steps=2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    operative = (tmp_path / "experiments" / "tiny" / "operative_config.gin").read_text()
    assert re.search(r"^(torch\.optim\.)?Adam\.lr = 0\.0005$", operative, re.M)
    assert re.search(r"^main\.num_epochs = 1$", operative, re.M)
    assert "AdamW" not in operative  # the binding replaced the config file's optimiser


def test_evaluate_and_finetune_from_a_saved_model(trained_run, tiny_dataset, tmp_path):
    run_dir, _ = trained_run
    model = run_dir / "model.pt"
    evaluated = evaluate_saved_model(model, tiny_dataset, tiny_dataset / "styles.csv", tmp_path, "eval")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    original = json.loads((run_dir / "results.json").read_text())
    again = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert again["top1"] == pytest.approx(original["top1"])  # the same model scores the same

    # Fine-tune on a different class set: a new head, the trained backbone kept.
    frame = pd.read_csv(tiny_dataset / "styles.csv")
    frame[frame["articleType"] != "Tshirts"].to_csv(tmp_path / "two.csv", index=False)
    config = write_config(tmp_path / "ft.gin", tiny_dataset, tmp_path, epochs=1)
    tuned = run_tailor("run", "-c", str(config), "-p", f"TransferNet.saved_model_path='{model}'",
                       "-p", f"FashionDataset.csv_file='{tmp_path}/two.csv'", "-p", "main.name='ft'", cwd=tmp_path)
    assert tuned.returncode == 0, tuned.stderr[-3000:]
    results = json.loads((tmp_path / "ft" / "results.json").read_text())
    assert results["classes"] == ["Sunglasses", "Watches"]
    unseen = [c for c in results["per_class"] if not c["seen"]]
    assert [c["class"] for c in unseen] == ["Tshirts"] and unseen[0]["top1"] == 0.0
    assert results["num_unseen_class_rows"] == 12


def test_a_new_model_from_saved_contents_keeps_the_trained_backbone_and_its_input_size():
    from tailor.models.files import ModelFileError
    from tailor.models.heads import TransferNet
    trained = TransferNet(["Shirts", "Watches"], pretrained=False, image_size=96)
    torch.nn.init.normal_(trained.head[-1].weight)
    saved = trained.export()

    same = TransferNet.from_saved(["Shirts", "Watches"], saved, "run/model.pt")
    assert same.image_size == 96 and same.backbone_name == trained.backbone_name
    assert all(torch.equal(a, b) for a, b in zip(same.state_dict().values(), trained.state_dict().values()))

    wider = TransferNet.from_saved(["Shirts", "Watches", "Kurtas"], saved, "run/model.pt", image_size=128)
    assert wider.image_size == 128 and wider.head[-1].out_features == 3
    assert all(torch.equal(a, b) for a, b in zip(wider.backbone.state_dict().values(),
                                                 trained.backbone.state_dict().values()))
    with pytest.raises(ModelFileError, match="names no backbone"):
        TransferNet.from_saved(["Shirts"], {"state_dict": saved["state_dict"]}, "last.ckpt")


def test_predict_prints_top_k_and_skips_unreadable_images(trained_run, tiny_dataset, tmp_path):
    run_dir, _ = trained_run
    image = next((tiny_dataset / "images").glob("*.jpg"))
    single = run_tailor("predict", str(run_dir), str(image), "-k", "2")
    assert single.returncode == 0, single.stderr
    lines = single.stdout.strip().splitlines()
    assert lines[0].endswith(image.name) and len(lines) == 3 and "%" in lines[1]

    folder = tmp_path / "incoming"
    folder.mkdir()
    for p in list((tiny_dataset / "images").glob("*.jpg"))[:4]:
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "preds.csv"
    batch = run_tailor("predict", str(run_dir), str(folder), "--csv", str(out))
    assert batch.returncode == 0, batch.stderr
    assert "broken.jpg" in batch.stderr and "skipped" in batch.stderr
    table = pd.read_csv(out)
    assert len(table) == 4 and list(table.columns[:3]) == ["path", "class1", "score1"]
    assert (table["score1"] >= table["score2"]).all()


@pytest.mark.slow
def test_a_killed_run_resumes_and_ends_like_an_unbroken_one(tiny_dataset, tmp_path):
    """SIGKILL after the first epoch's checkpoint; the same command finishes with the same metrics and curves."""
    config = write_config(tmp_path / "tiny.gin", tiny_dataset, tmp_path / "experiments", epochs=4)
    args = ["run", "-c", str(config), "-p", "TransferNet.image_size=64"]
    unbroken = run_tailor(*args, "-p", "main.name='unbroken'", cwd=tmp_path)
    assert unbroken.returncode == 0, unbroken.stderr[-3000:]

    run_dir = tmp_path / "experiments" / "broken"
    assert kill_after_first_epoch(args + ["-p", "main.name='broken'"], run_dir, tmp_path) < 3
    resumed = run_tailor(*args, "-p", "main.name='broken'", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stderr

    a = json.loads((tmp_path / "experiments" / "unbroken" / "results.json").read_text())
    b = json.loads((run_dir / "results.json").read_text())
    for key in ("top1", "top5", "best_val_acc", "best_step", "steps", "per_class"):
        assert a[key] == b[key], key
    assert_same_curves(tmp_path / "experiments" / "unbroken", run_dir)


def test_fresh_then_plain_rerun_is_the_same_config(tiny_dataset, tmp_path):
    config = write_config(tmp_path / "tiny.gin", tiny_dataset, tmp_path / "experiments", epochs=1)
    short = ["-p", "make_trainer.max_steps=2"]
    first = run_tailor("run", "-c", str(config), *short, "--fresh", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    assert (tmp_path / "experiments" / "tiny" / "checkpoints").is_dir()  # so the rerun compares configs
    again = run_tailor("run", "-c", str(config), *short, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming" in again.stderr


def test_a_run_folder_with_another_config_is_not_resumed(trained_run, tiny_dataset):
    run_dir, _ = trained_run
    config = write_config(run_dir.parent.parent / "other.gin", tiny_dataset, run_dir.parent, epochs=3)
    result = run_tailor("run", "-c", str(config), "-p", "main.name='tiny'", cwd=run_dir.parent.parent)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("tailor: error:")
    assert "different configuration" in result.stderr and "Traceback" not in result.stderr


def test_report_is_complete_and_self_contained(trained_run):
    from html.parser import HTMLParser

    from tailor.evaluation.report import SECTIONS

    run_dir, _ = trained_run
    page = (run_dir / "report.html").read_text()

    class Collector(HTMLParser):
        def __init__(self):
            super().__init__()
            self.ids, self.sources, self.rows = set(), [], 0

        def handle_starttag(self, tag, attrs):
            attrs = dict(attrs)
            if "id" in attrs:
                self.ids.add(attrs["id"])
            for key in ("src", "href"):
                if key in attrs:
                    self.sources.append(attrs[key])
            self.rows += tag == "tr"

    parsed = Collector()
    parsed.feed(page)
    only_elsewhere = {"knn", "map", "fewshot", "attributes", "audit"}  # metric, few-shot, attribute runs; tailor audit
    assert set(SECTIONS) - only_elsewhere <= parsed.ids
    assert not only_elsewhere & parsed.ids
    assert parsed.sources and all(s.startswith("data:image/") for s in parsed.sources)
    assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", page.replace("data:", "")), "an external URL"
    assert parsed.rows >= 3 + 5  # the per-class table and the data table
    assert "<figure>" in page or "No mistakes" in page  # the gallery of confident mistakes


def test_report_and_compare_commands(trained_run, tiny_dataset, tmp_path):
    run_dir, _ = trained_run
    (run_dir / "report.html").unlink()
    rebuilt = run_tailor("report", str(run_dir))
    assert rebuilt.returncode == 0 and (run_dir / "report.html").is_file()

    second = evaluate_saved_model(run_dir / "model.pt", tiny_dataset, tiny_dataset / "styles.csv", tmp_path, "again")
    assert second.returncode == 0, second.stderr[-2000:]
    compared = run_tailor("compare", str(run_dir), str(tmp_path / "again"), "--out", str(tmp_path / "cmp"))
    assert compared.returncode == 0, compared.stderr
    assert "| run | method | top1 | top5 |" in compared.stdout
    assert "| tiny | transfer |" in compared.stdout and "| again | transfer |" in compared.stdout
    assert (tmp_path / "cmp.md").is_file() and (tmp_path / "cmp.png").stat().st_size > 1000
    missing = run_tailor("compare", str(tmp_path / "nothing"))
    assert missing.returncode == 2 and "no results.json" in missing.stderr


def test_enroll_adds_a_category_that_predict_ranks_with_the_trained_ones(trained_run, tmp_path):
    import shutil

    from PIL import Image

    from conftest import SAMPLE

    run_dir = tmp_path / "run"
    shutil.copytree(trained_run[0], run_dir)
    styles = pd.read_csv(SAMPLE / "styles.csv")
    shoes = styles[styles["articleType"] == "Sports Shoes"].sort_values("id")["id"].head(10).tolist()
    watches = styles[styles["articleType"] == "Watches"].sort_values("id")["id"].tail(6).tolist()  # unseen ones
    for pid in shoes + watches:
        Image.open(SAMPLE / "images" / f"{pid}.jpg").convert("RGB").resize((48, 48)).save(tmp_path / f"{pid}.jpg")
    examples = [str(tmp_path / f"{pid}.jpg") for pid in shoes[:5]]

    def top1(ids):
        out = tmp_path / "p.csv"
        result = run_tailor("predict", str(run_dir), *[str(tmp_path / f"{pid}.jpg") for pid in ids], "--csv", str(out))
        assert result.returncode == 0, result.stderr[-2000:]
        return pd.read_csv(out)["class1"].tolist()

    watches_before = top1(watches).count("Watches")
    enrolled = run_tailor("enroll", str(run_dir), "--class", "Sports Shoes", *examples)
    assert enrolled.returncode == 0, enrolled.stderr[-2000:]
    assert "3 trained and 1 enrolled" in enrolled.stdout
    assert top1(shoes[5:]).count("Sports Shoes") >= 4          # held-out shoes find the new category
    assert top1(watches).count("Watches") >= watches_before - 1  # trained categories keep their images

    again = run_tailor("enroll", str(run_dir), "--class", "Sports Shoes", *examples)
    assert again.returncode == 2 and "--replace" in again.stderr
    assert run_tailor("enroll", str(run_dir), "--class", "Sports Shoes", "--replace", *examples[:2]).returncode == 0
    trained = run_tailor("enroll", str(run_dir), "--class", "Watches", *examples)
    assert trained.returncode == 2 and "trained category" in trained.stderr
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    unreadable = run_tailor("enroll", str(run_dir), "--class", "Caps", str(tmp_path / "bad.jpg"))
    assert unreadable.returncode == 2 and "no readable image" in unreadable.stderr
    saved = torch.load(run_dir / "enrolled.pt", weights_only=True)  # stored with the run, weights only
    assert list(saved["examples"]) == ["Sports Shoes"] and saved["heads"][0]["weight"].shape[0] == 4
    probe = torch.load(run_dir / "probe_features.pt", weights_only=True)  # enrolling calibrates as training did
    assert probe["calibration"] == calibration_settings() and probe["power"] == 1.0

    # a run enrolled into before ensembles existed (one head, stored flat) still predicts with its category
    from tailor.inference import Classifier
    head = saved["heads"][0]
    torch.save({"format": "tailor.enrolled/1", "examples": saved["examples"], "weight": head["weight"],
                "bias": head["bias"]}, run_dir / "enrolled.pt")
    classifier = Classifier.load(run_dir)
    assert classifier.classes[-1] == "Sports Shoes" and torch.equal(classifier.model.head[-1].weight, head["weight"])


def test_runtime_device_cpu_and_auto_give_identical_runs(tiny_dataset, tmp_path):
    """The device policy: 'auto' runs on the machine's first GPU where there is one, else on the CPU (each run
    records where it ran), and on the same device the same seed gives the same probe, scores and model file.
    (Where 'auto' is the CPU, as here, the second half checks the run is deterministic.)"""
    config = write_config(tmp_path / "tiny.gin", tiny_dataset, tmp_path / "experiments", epochs=0)
    for name, extra in (("auto", []), ("cpu", ["-p", "runtime.device='cpu'"])):
        result = run_tailor("run", "-c", str(config), "-p", f"main.name='{name}'", *extra, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
    auto, cpu = (json.loads((tmp_path / "experiments" / n / "results.json").read_text()) for n in ("auto", "cpu"))
    assert cpu["device"] == "cpu"
    assert auto["device"] == ("cuda:0" if torch.cuda.is_available() else "cpu")
    if torch.cuda.is_available():  # two devices: the same decisions, probabilities within float tolerance
        assert auto["top1"] == cpu["top1"] and auto["per_class"] == cpu["per_class"]
        return
    assert (auto["top1"], auto["top5"], auto["per_class"]) == (cpu["top1"], cpu["top5"], cpu["per_class"])
    models = [torch.load(tmp_path / "experiments" / n / "model.pt", weights_only=True)["state_dict"] for n in ("auto", "cpu")]
    assert models[0].keys() == models[1].keys()
    assert all(torch.equal(models[0][k], models[1][k]) for k in models[0])
    result = run_tailor("predict", str(tmp_path / "experiments" / "cpu"), str(next((tiny_dataset / "images").iterdir())),
                        "--device", "cuda:3")
    if not torch.cuda.is_available():
        assert result.returncode == 2 and "no usable CUDA GPU" in result.stderr and "Traceback" not in result.stderr


def test_a_missing_evaluation_table_fails_before_any_image_is_decoded(tiny_dataset, tmp_path):
    config = write_config(tmp_path / "tiny.gin", tiny_dataset, tmp_path / "experiments", epochs=0)
    result = run_tailor("run", "-c", str(config), "-p", "main.name='early'", "-p",
                        f"evaluate/FashionDataset.csv_file='{tmp_path}/nowhere/test.csv'", cwd=tmp_path)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("tailor: error")]
    assert len(lines) == 1 and "evaluate/FashionDataset.csv_file" in lines[0] and "nowhere/test.csv" in lines[0]
    run_dir = tmp_path / "experiments" / "early"
    assert not (run_dir / "model.pt").exists() and not (run_dir / "probe_features.pt").exists()
    assert "decoding" not in result.stderr and "features" not in result.stderr
    # a group that needs top_classes.txt, which a plain table lacks, fails as early
    result = run_tailor("run", "-c", str(config), "-p", "main.name='early'", "-p", "evaluate.group='top'", cwd=tmp_path)
    assert result.returncode == 2 and "top_classes.txt" in result.stderr
    assert not (run_dir / "model.pt").exists()
