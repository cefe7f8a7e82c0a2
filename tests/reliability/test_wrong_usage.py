"""Wrong usage of the commands that exist ends in one clear line and a non-zero exit."""

import torch

from tailor.models.heads import TransferNet

from conftest import run_tailor


def last_error_line(result) -> str:
    assert result.returncode == 2, (result.stdout[-500:], result.stderr[-2000:])
    assert "Traceback" not in result.stderr
    return result.stderr.strip().splitlines()[-1]


def test_an_empty_split_is_one_line(tmp_path, sample_root):
    empty = tmp_path / "empty.csv"
    empty.write_text("id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage\n")
    result = run_tailor("run", "-c", "configs/transfer.gin", "-p", f"FashionDataset.csv_file='{empty}'",
                        "-p", f"main.output_dir='{tmp_path}'")
    assert "empty.csv: no rows to use" in last_error_line(result)


def test_a_class_list_that_does_not_match_the_weights_is_one_line(tmp_path):
    model = TransferNet(["a", "b", "c"], pretrained=False, image_size=32)
    exported = model.export()
    exported["classes"] = ["a", "b"]  # edited by hand, or saved by another version
    torch.save(exported, tmp_path / "model.pt")
    image = tmp_path / "x.png"
    from PIL import Image
    Image.new("RGB", (32, 32)).save(image)
    line = last_error_line(run_tailor("predict", str(tmp_path / "model.pt"), str(image)))
    assert "do not match its class list (2 classes, a head for 3 classes" in line


def test_evaluating_a_group_with_no_rows_is_one_line(tmp_path, tiny_dataset):
    model = TransferNet(["Watches"], pretrained=False, image_size=32)
    torch.save(model.export(), tmp_path / "model.pt")
    (tiny_dataset / "top_classes.txt").write_text("Kurtas\n")
    try:
        result = run_tailor("run", "-c", "configs/transfer_evaluate.gin", "-p", f"TransferNet.saved_model_path='{tmp_path}/model.pt'",
                            "-p", f"FashionDataset.root_dir='{tiny_dataset}'",
                            "-p", f"FashionDataset.csv_file='{tiny_dataset}/styles.csv'",
                            "-p", "evaluate.group='top'", "-p", f"main.output_dir='{tmp_path}'")
    finally:
        (tiny_dataset / "top_classes.txt").unlink()
    assert "no rows to use" in last_error_line(result)


def test_similar_on_a_classifier_run_is_one_line(tmp_path):
    torch.save(TransferNet(["a", "b"], pretrained=False, image_size=32).export(), tmp_path / "model.pt")
    torch.save({"format": "tailor.index/1"}, tmp_path / "index.pt")
    result = run_tailor("similar", str(tmp_path), str(tmp_path / "q.jpg"))
    assert "not a tailor embedding model" in last_error_line(result)


def test_similar_with_an_unreadable_query_is_one_line(tmp_path):
    from tailor.models.embedding import EmbeddingNet
    from tailor.search.index import EmbeddingIndex

    model = EmbeddingNet(pretrained=False, image_size=32, projection={"dim": 8, "hidden": 0})
    torch.save(model.export(), tmp_path / "model.pt")
    EmbeddingIndex(torch.nn.functional.normalize(torch.randn(3, 8), dim=1), ["1", "2", "3"], ["a"] * 3,
                   ["1.jpg", "2.jpg", "3.jpg"], str(tmp_path)).save(tmp_path / "index.pt")
    query = tmp_path / "broken.jpg"
    query.write_bytes(b"\xff\xd8 not really a jpeg")
    assert "broken.jpg" in last_error_line(run_tailor("similar", str(tmp_path), str(query)))


def test_a_triplet_run_with_one_trainable_class_is_one_line(tmp_path, tiny_dataset):
    import pandas as pd

    styles = pd.read_csv(tiny_dataset / "styles.csv")
    one = tmp_path / "one.csv"
    styles[styles["articleType"] == "Watches"].to_csv(one, index=False)
    result = run_tailor("run", "-c", "configs/triplet.gin", "-p", f"FashionDataset.root_dir='{tiny_dataset}'",
                        "-p", f"FashionDataset.csv_file='{one}'", "-p", f"main.output_dir='{tmp_path}'",
                        "-p", f"evaluate/FashionDataset.csv_file='{one}'", "-p", "metric.image_size=32")
    assert "needs at least 2 classes with 4+ images" in last_error_line(result)


def test_few_shot_without_novel_classes_is_one_line(tmp_path, tiny_dataset):
    result = run_tailor("run", "-c", "configs/relation.gin", "-p", f"FashionDataset.root_dir='{tiny_dataset}'",
                        "-p", f"FashionDataset.csv_file='{tiny_dataset}/styles.csv'",
                        "-p", f"evaluate/FashionDataset.csv_file='{tiny_dataset}/styles.csv'",
                        "-p", f"main.output_dir='{tmp_path}'")
    # the tiny table is all base classes: no novel class is left to test on
    assert "no novel classes" in last_error_line(result)
