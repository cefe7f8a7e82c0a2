"""The Python API, in-process, on small real images: catalogs from dataframes, settings, fit, predict,
evaluate, enroll, save / load, look-alikes, audit, export and few-shot — and the same run as ``tailor run``."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import gin
import numpy as np
import pandas as pd
import pytest
from PIL import Image

import tailor
from conftest import make_tiny_dataset, run_tailor
from tailor.api.settings import RECIPES, gin_literal

pytestmark = pytest.mark.filterwarnings("ignore")

FAST = dict(backbone="efficientnet_lite0", image_size=32, progress=False)


@pytest.fixture(scope="module")
def catalog(tiny_dataset) -> tailor.Catalog:
    return tailor.read_catalog(tiny_dataset / "styles.csv")


@pytest.fixture(scope="module")
def model(catalog, tmp_path_factory) -> tailor.Model:
    return tailor.fit(catalog, "transfer", test=catalog, out=tmp_path_factory.mktemp("api") / "probe", **FAST)


# -- import -----------------------------------------------------------------------------------------------------

def test_import_tailor_is_light_and_exports_the_api():
    """`import tailor` loads no torch (names are imported when first used) and lists the public names."""
    code = ("import sys, tailor; assert 'torch' not in sys.modules, 'torch imported'; "
            "names = dir(tailor); print(all(n in names for n in ('fit', 'load', 'Catalog', 'read_catalog', 'audit', "
            "'fewshot', 'Model', 'year_splits')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        tailor.nothing  # noqa: B018


# -- catalogs ---------------------------------------------------------------------------------------------------

def test_a_catalog_from_a_dataframe_reports_unusable_rows_by_position(tmp_path):
    frame = pd.DataFrame({"path": ["a.jpg", None, "c.jpg", "d.jpg"], "kind": ["Shoes", "Bags", "", "Bags"],
                          "gender": ["Men", "Women", "Men", "Women"]})
    catalog = tailor.Catalog.from_frame(frame, root=tmp_path, image="path", label="kind")
    assert list(catalog.frame["image"]) == ["a.jpg", "d.jpg"] and list(catalog.frame["label"]) == ["Shoes", "Bags"]
    assert [str(p) for p in catalog.problems] == ["row 1: no image path", "row 2: no kind"]
    assert catalog.root == tmp_path and catalog.classes == ["Bags", "Shoes"]
    assert "gender" in catalog.frame  # other columns kept: filters and attributes use them
    with pytest.raises(tailor.CatalogError, match="no column 'label'"):
        tailor.Catalog.from_frame(frame, root=tmp_path, image="path")


def test_a_written_table_reads_back_the_same_rows_even_with_kaggle_columns(catalog, tmp_path):
    """An API table keeps Kaggle's columns (id, articleType…) beside its own image paths; reading it back takes
    its image and label columns, not the styles layout."""
    relabelled = catalog.with_label("gender")
    back = tailor.read_catalog(relabelled.write_table(tmp_path / "t.csv"), root=catalog.root)
    assert back.kind == "image-label"
    assert list(back.frame["image"]) == list(relabelled.frame["image"])
    assert list(back.frame["label"]) == list(relabelled.frame["gender"])


def test_year_splits_follow_the_seed_protocol():
    catalog = tailor.read_catalog(Path(__file__).parent.parent / "data" / "sample" / "styles.csv")
    splits = tailor.year_splits(catalog, top=5)
    assert (splits.train_top.frame["year"] % 2 == 0).all() and (splits.test.frame["year"] % 2 == 1).all()
    assert set(splits.train_top.classes) == set(splits.top_classes) and len(splits.top_classes) == 5
    assert not set(splits.train_other.classes) & set(splits.top_classes)
    assert len(splits.test_top) + len(splits.test_other) == len(splits.test)
    assert splits.test.root == catalog.root


# -- settings ---------------------------------------------------------------------------------------------------

def _configured(binding: str):
    """What the parsed config binds to ``binding``, else the configurable's own default."""
    try:
        return gin.query_parameter(binding)
    except ValueError:
        selector, _, parameter = binding.rpartition(".")
        configurable = gin.config._REGISTRY.get_match(selector)  # noqa: SLF001 — gin has no public lookup
        target = configurable.wrapped
        signature = inspect.signature(target.__init__ if inspect.isclass(target) else target)
        return signature.parameters[parameter].default


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) == list(b)
    return a == b


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_every_setting_defaults_to_what_its_config_file_binds(recipe):
    """A default changed in a config file or in the dataclass alone fails here."""
    from tailor import configurables

    settings = RECIPES[recipe]()
    configurables.parse([settings.config_file], [])
    for field in fields(settings):
        binding = field.metadata.get("gin")
        if binding:
            assert _same(getattr(settings, field.name), _configured(binding)), f"{recipe}.{field.name} ({binding})"


def test_settings_refuse_unknown_names_and_become_bindings():
    with pytest.raises(TypeError, match="no setting 'epoch'.*epochs"):
        tailor.fit.__globals__["recipe_settings"]("transfer", epoch=3)
    settings = tailor.TransferSettings().replace(epochs=3, backbone="efficientnet_lite0")
    assert "main.num_epochs = 3" in settings.bindings()
    assert "TransferNet.backbone = 'efficientnet_lite0'" in settings.bindings()
    assert gin_literal(("a", "b")) == "['a', 'b']" and gin_literal(None) == "None"
    with pytest.raises(ValueError, match="unknown recipe 'nope'"):
        tailor.fit(tailor.Catalog.from_frame(pd.DataFrame({"image": ["a"], "label": ["b"]}), root="."), "nope")


def test_few_shot_recipes_need_a_test_catalog(catalog):
    with pytest.raises(ValueError, match="pass test="):
        tailor.fit(catalog, "relation")


# -- a fitted model ---------------------------------------------------------------------------------------------

def test_fit_returns_a_model_with_its_results_as_dataframes(model, catalog):
    results = model.results
    assert results.top1 == results["top1"] and 0.0 <= results.top1 <= 1.0 and results.num_test == len(catalog)
    assert list(results.per_class.index) == ["Sunglasses", "Tshirts", "Watches"]
    assert results.per_class["support"].sum() == len(catalog)
    confusion = results.confusion
    assert confusion.to_numpy().sum() == len(catalog)
    assert np.trace(confusion.to_numpy()) / len(catalog) == pytest.approx(results.top1)
    assert (model.folder / "data" / "train.csv").is_file()  # the run keeps the table it was trained on
    assert model.kind == "classifier" and model.classes == ["Sunglasses", "Tshirts", "Watches"]


def test_predict_takes_files_folders_pil_images_and_arrays_alike(model, catalog):
    path = catalog.image_paths()[0]
    picture = Image.open(path).convert("RGB")
    table = model.predict([path, picture, np.asarray(picture), catalog.root / "images"], k=2)
    assert list(table.columns[:5]) == ["path", "class1", "score1", "class2", "score2"]
    assert len(table) == 3 + len(catalog)
    assert table["path"][0] == str(path) and table["path"][1] == "<image 1>"
    assert table["class1"][0] == table["class1"][1] == table["class1"][2]
    assert table["score1"][1] == pytest.approx(table["score1"][0], abs=1e-4)  # decoded in memory or from file
    assert table["score1"][2] == pytest.approx(table["score1"][1], abs=1e-6)
    probabilities = model.predict_proba(catalog)
    assert probabilities.shape == (len(catalog), 3)
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)
    assert (probabilities.idxmax(axis=1).to_numpy() == model.predict(catalog, k=1)["class1"].to_numpy()).all()


def test_an_unreadable_image_gets_its_reason_and_the_others_their_predictions(model, catalog, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    table = model.predict([catalog.image_paths()[0], broken], k=1)
    assert table["class1"].notna().tolist() == [True, False]
    assert pd.isna(table["error"][0]) and isinstance(table["error"][1], str)


def test_evaluate_scores_another_catalog_like_the_run_scored_its_test(model, catalog, tmp_path):
    results = model.evaluate(catalog, out=tmp_path / "eval", progress=False)
    assert results.top1 == pytest.approx(model.results.top1)
    assert results.per_class.equals(model.results.per_class)
    assert (tmp_path / "eval" / "confusion.png").is_file() and (tmp_path / "eval" / "results.json").is_file()
    watches = catalog.subset(catalog.frame["label"] == "Watches")
    assert model.evaluate(watches, progress=False).num_test == len(watches)


def test_enroll_and_remove_a_category_from_pil_images(model, catalog, tmp_path):
    run = model.save(tmp_path / "run")  # a copy: the module's model stays as it was
    belts = [Image.open(p) for p in catalog.image_paths()[:4]]
    run.enroll("Belts", belts)
    assert run.classes[-1] == "Belts" and run.enrolled == ["Belts"]
    again = tailor.load(tmp_path / "run")  # another process's view: the enrolment is in the run folder
    assert again.classes == run.classes
    assert again.predict(belts[:1], k=4)["class1"][0] == "Belts"
    run.remove("Belts")
    assert run.classes == model.classes and not (tmp_path / "run" / "enrolled.pt").exists()


def test_a_temporary_model_saves_and_loads_as_the_same_model(catalog, tmp_path):
    fitted = tailor.fit(catalog, "transfer", **FAST)
    assert fitted.temporary and "temporary" in repr(fitted)
    saved = fitted.save(tmp_path / "kept")
    with pytest.raises(FileExistsError):
        fitted.save(tmp_path / "kept")
    loaded = tailor.load(tmp_path / "kept")
    first = catalog.image_paths()[:5]
    pd.testing.assert_frame_equal(loaded.predict(first), fitted.predict(first))
    assert not saved.temporary and "top1" not in dict(loaded.results)  # no test catalog: nothing scored


def test_the_api_and_tailor_run_make_the_same_run(model, tiny_dataset, tmp_path):
    """The same settings and seed through the API and through `tailor run -c configs/transfer.gin`: identical
    metrics and per-class table."""
    config = tmp_path / "same.gin"
    config.write_text(f"""include 'configs/transfer.gin'
FashionDataset.root_dir = '{tiny_dataset}'
FashionDataset.csv_file = '{tiny_dataset}/styles.csv'
evaluate/FashionDataset.csv_file = '{tiny_dataset}/styles.csv'
evaluate.group = 'all'
TransferNet.backbone = 'efficientnet_lite0'
TransferNet.image_size = 32
main.output_dir = '{tmp_path}'
main.name = 'cli'
""")
    result = run_tailor("run", "-c", str(config))
    assert result.returncode == 0, result.stderr[-2000:]
    cli = json.loads((tmp_path / "cli" / "results.json").read_text())
    api = dict(model.results)
    for key in ("top1", "top5", "num_test", "seen_top1", "classes", "train_images", "per_class"):
        assert cli[key] == api[key], key


# -- other recipes -------------------------------------------------------------------------------------------------

def test_similar_returns_look_alikes_as_a_table_never_the_query(search_run, catalog):
    search = tailor.load(search_run)
    query = catalog.image_paths()[0]
    table = search.similar(query, k=5)
    assert list(table["rank"]) == [1, 2, 3, 4, 5] and table["score"].is_monotonic_decreasing
    assert str(query.name) not in {Path(p).name for p in table["image"]}
    pil = search.similar(Image.open(query), k=5)
    assert query.name not in {Path(p).name for p in pil["image"]}  # the same picture, uploaded: still left out
    women = search.similar(query, k=50, filters={"gender": "Women"})
    assert len(women) > 0 and set(women["gender"]) == {"Women"}
    with pytest.raises(Exception, match="does not classify"):
        tailor.load(search_run).enroll("Belts", [query])


def test_evaluate_scores_an_embedding_run_as_the_run_scored_its_test_split(catalog, tmp_path):
    """A triplet run trained on half of each category: Model.evaluate on the other half classifies each product
    by kNN among the training products in the run's index, with the run's kNN settings, and gives the run's
    own numbers."""
    frame = catalog.frame
    held = frame.groupby("label").cumcount() % 2 == 1
    train, test = catalog.subset(frame.index[~held]), catalog.subset(frame.index[held])
    run = tailor.fit(train, "triplet", test=test, out=tmp_path / "triplet", epochs=0, tsne=False, dim=16,
                     k=3, colour_powers=(0.0,), colour_weight_decays=(0.03,), **FAST)
    again = run.evaluate(test, out=tmp_path / "again", progress=False)
    assert again.num_test == run.results.num_test == len(test)
    assert again.top1 == pytest.approx(run.results.top1) and again.top5 == pytest.approx(run.results.top5)
    assert again["knn"]["k"] == 3 and again["references"] == len(train)
    pd.testing.assert_frame_equal(again.per_class, run.results.per_class)
    assert (tmp_path / "again" / "per_class.md").is_file() and (tmp_path / "again" / "mistakes.csv").is_file()

    on_train = run.evaluate(train, progress=False)  # each product left out of its own neighbours
    assert on_train.num_test == len(train) and on_train["references"] == len(train)


def test_audit_finds_a_flipped_label(model, catalog, tmp_path):
    frame = catalog.frame.copy()
    flipped = frame.index[frame["label"] == "Watches"][0]
    frame.loc[flipped, "label"] = "Tshirts"
    noisy = tailor.Catalog.from_frame(frame, root=catalog.root)
    found = tailor.audit(model, noisy, folds=3, out=tmp_path / "audit", progress=False)
    assert len(found.label_issues) == len(catalog)
    top = found.label_issues.head(3)
    assert frame.loc[flipped, "image"] in set(top["image"]), top
    assert (tmp_path / "audit" / "duplicates.csv").is_file() and "labels look wrong" in repr(found)


def test_export_gives_a_model_that_predicts_like_the_run(model, catalog, tmp_path):
    exported = model.export(tmp_path / "model.onnx")
    assert exported.exported and exported.kind == "classifier"
    images = catalog.image_paths()[:6]
    ours, theirs = model.predict(images, k=1), exported.predict(images, k=1)
    assert list(ours["class1"]) == list(theirs["class1"])
    assert np.allclose(ours["score1"], theirs["score1"], atol=1e-3)


def test_fewshot_evaluate_trains_and_scores_episodes_from_a_dataframe(tmp_path):
    root = make_tiny_dataset(tmp_path / "shop", ["Watches", "Tshirts", "Sunglasses", "Handbags", "Casual Shoes",
                                                 "Sports Shoes"], 10)
    frame = pd.read_csv(root / "styles.csv")
    frame["image"] = "images/" + frame["id"].astype(str) + ".jpg"
    catalog = tailor.Catalog.from_frame(frame, root=root, label="articleType")
    table = tailor.fewshot.evaluate(catalog, "protonet", base=3, ways=3, shots=(1,), episodes=20, q_query=2,
                                    epochs=1, episodes_per_epoch=5, val_episodes=5, progress=False)
    assert {"raw", "cl2n", "calibrated", "protonet, trained"} <= set(table["scorer"])
    assert set(table["ways"]) == {3} and set(table["shots"]) == {1} and set(table["episodes"]) == {20}
    assert ((table["accuracy"] >= 0) & (table["accuracy"] <= 1) & (table["ci95"] > 0)).all()


def test_finetune_from_a_model_carries_the_untrained_categories_by_name(model, tmp_path):
    """The seed's second experiment from Python: start from a trained model, tailor it to other categories;
    with names (finetune's default) a test category with no training image is ranked by its name."""
    root = make_tiny_dataset(tmp_path / "rare", ["Handbags", "Casual Shoes", "Sports Shoes", "Flip Flops"], 8)
    everything = tailor.read_catalog(root / "styles.csv")
    train = everything.subset(everything.frame["label"] != "Flip Flops")
    rare = tailor.fit(train, "finetune", test=everything, start_from=model, out=tmp_path / "finetune", **FAST)
    results = rare.results
    assert rare.classes[-1] == "Flip Flops" and "Flip Flops" not in train.classes
    assert results.num_name_only_rows == 8 and 0.0 <= results.name_only_top5 <= 1.0
    assert results.per_class.loc["Flip Flops", "name_only"]
