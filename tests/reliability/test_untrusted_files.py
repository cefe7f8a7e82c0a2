"""Untrusted files: checkpoints carrying code are refused without running it; writes are atomic."""

import json
import os

import pytest
import torch

from tailor.files import atomic_write, write_json
from tailor.models.files import ModelFileError, load_model_file, save_model_file

from conftest import run_tailor


class Payload:
    """Pickled, this object runs code on load: it creates the file named in ``marker``."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_with_a_pickle_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "payload-ran"
    path = tmp_path / "model.pt"
    torch.save({"classes": ["a"], "state_dict": {}, "extra": Payload(str(marker))}, path)
    with pytest.raises(ModelFileError, match="refused"):
        load_model_file(path)
    assert not marker.exists()

    result = run_tailor("predict", str(path), str(path))
    assert result.returncode == 2 and "refused" in result.stderr and "Traceback" not in result.stderr
    assert not marker.exists()


def test_damaged_and_foreign_files_are_refused(tmp_path):
    good = tmp_path / "good.pt"
    save_model_file(good, {"classes": ["a"], "state_dict": {"w": torch.ones(2)}})
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(good.read_bytes()[:40])
    with pytest.raises(ModelFileError, match="not a readable model file"):
        load_model_file(damaged)
    listed = tmp_path / "list.pt"
    torch.save([1, 2, 3], listed)
    with pytest.raises(ModelFileError, match="expected a dict"):
        load_model_file(listed)
    assert torch.equal(load_model_file(good)["state_dict"]["w"], torch.ones(2))


def test_a_write_that_dies_midway_leaves_the_old_file_whole(tmp_path):
    path = tmp_path / "results.json"
    write_json(path, {"top1": 0.5})

    def dies(handle):
        handle.write('{"top1": 0.9, "per_cl')
        raise KeyboardInterrupt  # a kill between writing and renaming

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, dies, mode="w")
    assert json.loads(path.read_text()) == {"top1": 0.5}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temporary left behind


def test_training_checkpoints_are_atomic_and_weights_only(tmp_path):
    from tailor.training import AtomicCheckpointIO

    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "epoch": 1}, path)

    class Unsaveable:
        def __reduce__(self):
            raise KeyboardInterrupt  # dies halfway through pickling, as a kill would

    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "epoch": 2, "x": Unsaveable()}, path)
    assert io.load_checkpoint(path)["epoch"] == 1  # the previous checkpoint, whole
    torch.save({"x": Payload(str(tmp_path / "ran"))}, tmp_path / "evil.ckpt")
    with pytest.raises(ModelFileError):
        io.load_checkpoint(tmp_path / "evil.ckpt")
    assert not (tmp_path / "ran").exists()


@pytest.mark.parametrize("statement", ["import planted", "from planted import anything",
                                       "from __gin__ import dynamic_registration"])
def test_a_config_cannot_import_code(tmp_path, statement):
    """A shared config file is data: importing a module (which would run its code) is refused before it runs."""
    (tmp_path / "planted.py").write_text("open('RAN', 'w').write('the planted module ran')\n")
    config = tmp_path / "shared.gin"
    config.write_text(f"{statement}\nmain.num_epochs = 0\n")
    for args in (["-c", str(config)], ["-c", str(config.with_name("plain.gin")), "-p", statement]):
        config.with_name("plain.gin").write_text("main.num_epochs = 0\n")
        result = run_tailor("run", *args, cwd=tmp_path)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert f"'{statement}' refused: a config can only configure registered tailor and torch names" in result.stderr
        assert not (tmp_path / "RAN").exists()


def test_a_config_may_import_torch_names(tmp_path):
    from tailor import config, configurables

    (tmp_path / "ok.gin").write_text("import torch.optim\nmain.num_epochs = 0\n")
    configurables.parse([tmp_path / "ok.gin"], [])
    assert "main.num_epochs = 0" in config.full_config()
