"""The one macro F1 (maskopt.search.train.metrics): both class policies against scikit-learn, and
the search's fold scores, ``maskopt score`` and the OOF tools agreeing on data with an empty class."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from maskopt.search.export.score import score_submission
from maskopt.search.space import parse_space
from maskopt.search.study import oof
from maskopt.search.train import metrics
from maskopt.search.train.loop import TrainConfig, TrainingData, train_fold
from maskopt.search.train.metrics import ALL, PRESENT, ClassPolicy, macro_f1, macro_f1_many

N_CLASSES = 7


def random_cases(seed=1, count=40):
    """Labels and predictions where some classes are absent from the truth, the prediction, or both."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        n = int(rng.integers(1, 60))
        truth_classes = rng.choice(N_CLASSES, size=int(rng.integers(1, N_CLASSES + 1)), replace=False)
        pred_classes = rng.choice(N_CLASSES, size=int(rng.integers(1, N_CLASSES + 1)), replace=False)
        y = rng.choice(truth_classes, n)
        pred = rng.choice(pred_classes, n) if i % 3 else np.where(rng.random(n) < 0.6, y, rng.choice(pred_classes, n))
        yield y, pred


def test_the_cases_cover_absent_classes():
    kinds = set()
    for y, pred in random_cases():
        in_truth, in_pred = set(y.tolist()), set(pred.tolist())
        for c in range(N_CLASSES):
            kinds.add((c in in_truth, c in in_pred))
    assert kinds == {(True, True), (True, False), (False, True), (False, False)}


def test_present_is_sklearns_default_macro_f1():
    for y, pred in random_cases():
        expected = f1_score(y, pred, average="macro", zero_division=0)
        assert macro_f1(y, pred, n_classes=N_CLASSES) == pytest.approx(expected)  # PRESENT is the default
        assert macro_f1(y, pred, n_classes=N_CLASSES, classes=PRESENT) == pytest.approx(expected)


def test_all_counts_every_class():
    for y, pred in random_cases():
        expected = f1_score(y, pred, average="macro", labels=range(N_CLASSES), zero_division=0)
        assert macro_f1(y, pred, n_classes=N_CLASSES, classes=ALL) == pytest.approx(expected)


def test_the_policies_differ_only_when_a_class_is_empty():
    y, pred = np.array([0, 0, 1, 1]), np.array([0, 0, 1, 0])  # class 2 occurs in neither
    present, every = macro_f1(y, pred, n_classes=3), macro_f1(y, pred, n_classes=3, classes=ALL)
    assert present == pytest.approx((0.8 + 2 / 3) / 2) and every == pytest.approx((0.8 + 2 / 3) / 3)
    assert macro_f1(y, pred, n_classes=2) == macro_f1(y, pred, n_classes=2, classes=ALL) == pytest.approx(present)


def test_probabilities_are_scored_by_their_argmax():
    rng = np.random.default_rng(2)
    for y, _ in random_cases(seed=2, count=10):
        probs = rng.dirichlet(np.ones(N_CLASSES), size=len(y))
        for policy in ClassPolicy:
            assert macro_f1(y, probs, n_classes=N_CLASSES, classes=policy) == macro_f1(
                y, probs.argmax(axis=1), n_classes=N_CLASSES, classes=policy)


def test_many_rows_equal_one_row_at_a_time():
    rng = np.random.default_rng(3)
    for y, _ in random_cases(seed=3, count=10):
        preds = rng.integers(0, N_CLASSES, (5, len(y)))
        preds[1] = y  # perfect
        preds[2] = 0  # one class only
        for policy in ClassPolicy:
            many = macro_f1_many(y, preds, n_classes=N_CLASSES, classes=policy)
            assert many.shape == (5,)
            assert many.tolist() == [macro_f1(y, p, n_classes=N_CLASSES, classes=policy) for p in preds]
        assert macro_f1_many(y, preds, n_classes=N_CLASSES)[1] == 1.0


def test_empty_input_scores_zero():
    assert macro_f1([], [], n_classes=3) == 0.0 and macro_f1([], [], n_classes=3, classes=ALL) == 0.0


@pytest.mark.parametrize("call, message", [
    (lambda: macro_f1([0, 1, 1, 0], [0, 1, 1], n_classes=2), "4 labels but 3 predictions"),
    (lambda: macro_f1([0, 1], np.full((3, 2), 0.5), n_classes=2), "2 labels but 3 predictions"),
    (lambda: macro_f1([0, 1], np.full((2, 3), 0.5), n_classes=2), r"shape \(n, 2\)"),
    (lambda: macro_f1([0, 2], [0, 1], n_classes=2), "y_true must lie in 0..1"),
    (lambda: macro_f1([0, 1], [0, -1], n_classes=2), "predicted must lie in 0..1"),
    (lambda: macro_f1([0.0, 1.0], [0, 1], n_classes=2), "integer labels"),
    (lambda: macro_f1([[0, 1]], [0, 1], n_classes=2), "1-D"),
    (lambda: macro_f1([0, 1], [0, 1], n_classes=2, classes="present"), "PRESENT or ALL"),
    (lambda: macro_f1_many([0, 1], [[0, 1, 1]], n_classes=2), r"shape \(m, 2\)"),
])
def test_bad_input_is_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_metrics_depends_on_no_other_maskopt_module():
    """It is the lowest layer: the training loop and the OOF and scoring code all import it."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(metrics))
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert {m for m in imported if m and m.startswith("maskopt")} <= {"maskopt.errors"}


# --- the point: one function, one policy, wherever a macro F1 is computed ------------------


def test_fold_score_score_command_and_oof_scores_agree_when_a_class_is_empty(space_dict, tmp_path):
    """A trial's fold score (the training loop), ``maskopt score`` and the OOF tools (ensemble
    selection, offset calibration) computed on the same labels and predictions are the same
    number, also when classes are empty: they all call metrics.macro_f1 with PRESENT."""
    space = parse_space(space_dict(params={"batch_size": 8}))
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (36, 3, 32, 32), dtype=np.uint8))
    labels = rng.integers(0, 6, 36)  # classes 6..17 never occur
    data = TrainingData(images, np.arange(26), labels[:26], np.arange(26, 36), labels[26:])
    result, _ = train_fold(space.params_from({}), data, config=TrainConfig(epochs=1), num_classes=18,
                           device=torch.device("cpu"), seed=3)
    y, probs = data.val_labels, result.best_probs
    pred = probs.argmax(axis=1)
    assert len(set(y.tolist()) | set(pred.tolist())) < 18, "the case in point: some class is empty"
    fold_score = result.best_f1

    assert fold_score == macro_f1(y, probs, n_classes=18, classes=PRESENT)
    assert fold_score == pytest.approx(f1_score(y, pred, average="macro", zero_division=0))  # the competition's
    assert fold_score != pytest.approx(macro_f1(y, probs, n_classes=18, classes=ALL)), "ALL would disagree here"

    selection = oof.caruana_ensemble([probs], y, size=3, n_classes=18)
    assert selection.best_single_f1 == selection.f1 == fold_score
    uncalibrated, _ = oof.nested_offset_gain(np.log(probs + 1e-9), y, np.arange(len(y)) % 2, n_classes=18)
    assert uncalibrated == fold_score

    ids = [f"{i:04d}.jpg" for i in range(len(y))]
    (tmp_path / "solution.csv").write_text("ImageID,ans\n" + "".join(f"{i},{c}\n" for i, c in zip(ids, y)))
    (tmp_path / "submission.csv").write_text("ImageID,ans\n" + "".join(f"{i},{c}\n" for i, c in zip(ids, pred)))
    assert score_submission(tmp_path / "submission.csv", tmp_path / "solution.csv").macro_f1 == fold_score


def test_ensemble_selection_scores_with_present_on_data_with_an_absent_class():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 4, 200)  # class 4 of 5 never occurs
    candidates = [rng.dirichlet(np.ones(5), size=len(y)) for _ in range(3)]
    selection = oof.caruana_ensemble(candidates, y, size=5, n_classes=5)
    singles = [macro_f1(y, p, n_classes=5, classes=PRESENT) for p in candidates]
    assert selection.single_f1s == tuple(singles)
    assert selection.best_single_f1 == max(singles)
    assert selection.f1 == macro_f1(y, selection.blend(candidates), n_classes=5, classes=PRESENT)
