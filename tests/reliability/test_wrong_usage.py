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
