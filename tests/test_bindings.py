"""gin bindings are resolved at the edge into the objects a recipe receives: the networks, tasks and settings a
run is built from carry the bindings, and nothing built outside a run (a model loaded from its file, a class
used directly) picks them up, whatever the process has bound."""

import ast
from pathlib import Path

import gin
import pytest

from tailor import configurables, run_inputs
from tailor.data.transforms import Augmentation
from tailor.models.heads import TransferNet
from tailor.recipes.parts import RecipeParts
from tailor.training import TrainerSettings

BINDINGS = ["TransferNet.dropout = 0.5", "TransferNet.pretrained = False", "TransferNet.image_size = 32",
            "train_transform.rotation = 7.0", "make_trainer.max_steps = 3", "ClassificationTask.label_smoothing = 0.3",
            "Projection.dim = 8", "evaluate.tta = False", "serve.settings.max_batch = 4",
            "export.quantize_int8.method = 'percentile'", "runtime.device = 'cpu'"]


@pytest.fixture
def bound():
    configurables.parse([], BINDINGS)
    yield
    gin.clear_config()


def test_the_parts_a_run_builds_from_carry_its_bindings(bound):
    parts = run_inputs.recipe_parts()
    assert parts.trainer.max_steps == 3 and parts.trainer.max_epochs == TrainerSettings().max_epochs
    assert parts.augmentation == Augmentation(rotation=7.0)
    net = parts.transfer_net(["a", "b"])
    assert isinstance(net, TransferNet) and net.dropout == 0.5 and net.image_size == 32
    assert parts.classification_task(net).label_smoothing == 0.3
    assert parts.projection(16).dim == 8
    assert run_inputs.transfer_inputs().evaluation.tta is False
    assert run_inputs.bound_serve().max_batch == 4 and run_inputs.bound_int8().method == "percentile"
    assert run_inputs.device_setting() == "cpu"


def test_nothing_outside_a_run_picks_the_bindings_up(bound):
    plain = RecipeParts()
    assert plain.trainer == TrainerSettings() and plain.augmentation == Augmentation()
    net = TransferNet(["a", "b"], pretrained=False)  # as a loader builds one
    assert net.dropout == 0.2 and net.image_size != 32
    assert plain.projection(16).dim == 256


def test_a_binding_the_edge_does_not_know_is_refused():
    with pytest.raises(ValueError, match="evaluate_attributes"):
        configurables.parse([], ["evaluate_attributes.group = 'top'"])
    gin.clear_config()


#: the modules that may know gin: the command, gin's parsing, the bindings and what resolves them, the run, the
#: API's front door and its fit (which go through bindings), the server's launcher
FRONT_ENDS = {"tailor", "tailor.__main__", "tailor.cli", "tailor.config", "tailor.configurables", "tailor.run_inputs",
              "tailor.experiment", "tailor.api.fitting", "tailor.fewshot", "tailor.serve.launch"}


def test_below_the_front_ends_no_module_imports_gin_or_a_front_end():
    """Read from the source, imports inside functions included: so nothing below the front-ends can reach gin."""
    package = Path(__file__).resolve().parent.parent / "tailor"
    offenders = []
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if module in FRONT_ENDS:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                # `from tailor import run_folder` imports tailor.run_folder, not the package's front door
                names = [*([node.module] if node.module != "tailor" else []),
                         *(f"{node.module}.{alias.name}" for alias in node.names)]
            else:
                continue
            offenders += [f"{module} imports {name}" for name in names
                          if name == "gin" or name.startswith("gin.") or name in FRONT_ENDS]
    assert not offenders, offenders
