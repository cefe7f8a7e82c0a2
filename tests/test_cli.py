"""Wrong usage ends in one clear line and a non-zero exit, never a traceback."""

import pytest

from conftest import run_tailor


def one_line_error(result) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("tailor: error: ")
    return last


@pytest.mark.parametrize("args, message", [
    (["run", "-c", "configs/nope.gin"], "config file not found: configs/nope.gin"),
    (["run", "-c", "configs/transfer.gin", "-p", "NoSuchThing.value = 3"], "No configurable matching 'NoSuchThing'"),
    (["run", "-c", "configs/transfer.gin", "-p", "main.num_epochs = "], "main.num_epochs"),
    (["splits", "missing.csv", "out"], "missing.csv: no such file"),
    (["predict", "no/such/run", "x.jpg"], "no trained model here"),
])
def test_usage_errors_are_one_line(args, message, tmp_path):
    assert message in one_line_error(run_tailor(*args))


def test_unknown_backbone_is_one_line(tmp_path, sample_root):
    result = run_tailor("run", "-c", "configs/transfer.gin", "-p", "TransferNet.backbone='nonet'",
                        "-p", f"FashionDataset.csv_file='{sample_root}/styles.csv'",
                        "-p", f"evaluate/FashionDataset.csv_file='{sample_root}/styles.csv'",
                        "-p", "evaluate.group='all'", "-p", f"main.output_dir='{tmp_path}'")
    assert "unknown backbone 'nonet'" in one_line_error(result)


def test_missing_training_csv_is_one_line(tmp_path):
    result = run_tailor("run", "-c", "configs/transfer.gin", "-p", f"FashionDataset.csv_file='{tmp_path}/x.csv'",
                        "-p", f"main.output_dir='{tmp_path}'")
    line = one_line_error(result)
    assert line == f"tailor: error: {tmp_path}/x.csv: no such file or folder (set FashionDataset.csv_file / root_dir)"


def test_missing_splits_say_how_to_make_them(tmp_path):
    result = run_tailor("run", "-c", "configs/transfer.gin", "-p", f"main.output_dir='{tmp_path}'",
                        "-p", f"FashionDataset.csv_file='{tmp_path}/splits/train_top20.csv'")
    assert "make the splits first: tailor splits data/styles.csv" in one_line_error(result)


def test_module_and_console_entry_points_agree():
    result = run_tailor("--help")
    assert result.returncode == 0 and "splits" in result.stdout and "predict" in result.stdout


def test_help_examples_name_real_commands_and_configs():
    """The examples under ``tailor --help`` parse as real sub-commands and name config files that ship."""
    import shlex
    from pathlib import Path

    from tailor.cli import EXAMPLES, build_parser

    lines = [shlex.split(line) for line in EXAMPLES.splitlines() if line.strip().startswith("tailor ")]
    assert len(lines) >= 5
    for words in lines:
        assert build_parser().parse_args(words[1:]).command == words[1], words
        for config in (w for w in words if w.endswith(".gin")):
            assert (Path(__file__).parents[1] / config).is_file(), config
