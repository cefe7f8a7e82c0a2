"""Evaluation maths on hand-made predictions: top-k, per-class, classes the model never saw."""

import numpy as np
import pytest

from tailor.evaluation.metrics import confusion_counts, evaluate_scores, per_class_markdown, topk_hits

CLASSES = ["a", "b", "c", "d", "e", "f"]
# Each row ranks the classes; the comment gives the rank of the true class.
SCORES = np.array([
    [0.90, 0.05, 0.02, 0.01, 0.01, 0.01],  # true a: rank 1
    [0.50, 0.40, 0.05, 0.03, 0.01, 0.01],  # true b: rank 2
    [0.30, 0.25, 0.20, 0.15, 0.06, 0.04],  # true f: rank 6 (outside the top 5)
    [0.10, 0.10, 0.60, 0.10, 0.05, 0.05],  # true c: rank 1
    [0.20, 0.20, 0.20, 0.20, 0.10, 0.10],  # true z: a class the model does not know
])
TRUE = ["a", "b", "f", "c", "z"]


def test_topk_hits():
    targets = np.array([0, 1, 5, 2, -1])
    assert topk_hits(SCORES, targets, 1).tolist() == [True, False, False, True, False]
    assert topk_hits(SCORES, targets, 5).tolist() == [True, True, False, True, False]
    assert topk_hits(SCORES, targets, 6).tolist() == [True, True, True, True, False]  # unknown never hits
    assert topk_hits(SCORES[:, :3], np.array([0, 1, 2, 2, 1]), 5).all()  # k larger than the class count


def test_unseen_classes_count_as_errors_and_are_reported_apart():
    result = evaluate_scores(SCORES, TRUE, CLASSES, train_counts={"a": 10, "b": 3, "c": 1, "f": 2})
    assert result.top1 == pytest.approx(2 / 5)
    assert result.top5 == pytest.approx(3 / 5)
    assert result.num_test == 5 and result.num_unseen == 1
    assert result.seen_top1 == pytest.approx(2 / 4) and result.seen_top5 == pytest.approx(3 / 4)
    rows = {c.label: c for c in result.per_class}
    assert set(rows) == {"a", "b", "c", "f", "z"}
    assert (rows["b"].top1, rows["b"].top5, rows["b"].train_count) == (0.0, 1.0, 3)
    assert rows["z"].seen is False and rows["z"].train_count == 0 and rows["a"].seen is True
    data = result.as_dict()
    assert {"top1", "top5", "per_class", "num_test", "seen_top1", "unseen_fraction"} <= set(data)
    assert data["unseen_fraction"] == pytest.approx(0.2)


def test_per_class_table_stars_unseen_classes():
    table = per_class_markdown(evaluate_scores(SCORES, TRUE, CLASSES))
    assert "|z\\*|0.0000|0.0000|1|0|" in table
    assert "|a|1.0000|1.0000|1|0|" in table
    assert "no examples of these classes" in table


def test_confusion_counts():
    matrix, rows, cols = confusion_counts(SCORES, TRUE, CLASSES)
    assert rows == ["a", "b", "c", "f", "z"] and cols == CLASSES
    assert matrix.sum() == 5
    assert matrix[rows.index("b"), cols.index("a")] == 1  # b predicted as a
    assert matrix[rows.index("z"), cols.index("a")] == 1  # ties go to the first class


def test_empty_evaluation_is_an_error():
    with pytest.raises(ValueError, match="no test rows"):
        evaluate_scores(np.zeros((0, 6)), [], CLASSES)
