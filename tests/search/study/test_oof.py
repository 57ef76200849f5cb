"""Out-of-fold tools: ensemble selection, per-class offsets, label issues, on synthetic OOFs."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from maskopt.search.study.oof import (
    OFFSET_GRID,
    EnsembleSelection,
    LabelIssue,
    caruana_ensemble,
    find_label_issues,
    fit_class_offsets,
    nested_offset_gain,
)
from maskopt.search.train import metrics

K = 6


def one_hot_probs(rng, y, n_classes, *, right, strength=20.0):
    """Dirichlet probabilities peaked on ``right`` (per row: the class to favour)."""
    alpha = np.ones((len(y), n_classes))
    alpha[np.arange(len(y)), right] = strength
    draws = rng.gamma(alpha)
    return draws / draws.sum(axis=1, keepdims=True)


def specialist(rng, y, good_on):
    """Confident and right on the classes in ``good_on``; on the rest, less confident and wrong."""
    n = len(y)
    good = np.isin(y, good_on)
    wrong = (y + rng.integers(1, K, n)) % K
    probs = np.empty((n, K))
    probs[good] = one_hot_probs(rng, y[good], K, right=y[good], strength=30)
    probs[~good] = one_hot_probs(rng, y[~good], K, right=wrong[~good], strength=4)
    return probs


@pytest.fixture(scope="module")
def specialists():
    rng = np.random.default_rng(0)
    y = rng.integers(0, K, 600)
    a = specialist(rng, y, [0, 1, 2])
    b = specialist(rng, y, [3, 4, 5])
    noise = rng.dirichlet(np.ones(K), size=len(y))
    return y, a, b, noise


# --- the metric -----------------------------------------------------------------------------


def macro_f1(y, probs) -> float:
    """The score every OOF tool uses: maskopt's one macro F1, PRESENT policy (tested in test_metrics.py)."""
    return metrics.macro_f1(y, probs, n_classes=K, classes=metrics.PRESENT)


# --- ensemble selection ---------------------------------------------------------------------


def test_ensemble_of_two_specialists_beats_both(specialists):
    y, a, b, noise = specialists
    selection = caruana_ensemble([noise, a, b], y, size=10, n_classes=K)
    assert isinstance(selection, EnsembleSelection)
    f1_a, f1_b = macro_f1(y, a), macro_f1(y, b)
    assert max(f1_a, f1_b) < 0.6
    assert selection.best_single == int(np.argmax([macro_f1(y, noise), f1_a, f1_b]))
    assert selection.best_single_f1 == pytest.approx(max(f1_a, f1_b))
    assert selection.f1 > max(f1_a, f1_b) + 0.3
    assert set(selection.members) == {1, 2}, "the noise candidate is never picked"
    assert sum(selection.weights) == pytest.approx(1)
    assert selection.f1 == pytest.approx(macro_f1(y, selection.blend([noise, a, b])))
    assert selection.single_f1s == pytest.approx([macro_f1(y, p) for p in (noise, a, b)])


def test_selection_is_deterministic_ties_go_to_the_lowest_index_and_it_stops_early(specialists):
    y, a, b, noise = specialists
    first = caruana_ensemble([a, b, a.copy(), b.copy(), noise], y, size=50, n_classes=K)
    again = caruana_ensemble([a, b, a.copy(), b.copy(), noise], y, size=50, n_classes=K)
    assert first == again
    assert set(first.members) <= {0, 1}, "copies tie with their originals and lose"
    assert len(first.picks) < 50, "stops when no pick strictly improves"
    assert len(first.picks) == sum(round(w * len(first.picks)) for w in first.weights)
    # The F1 rises strictly with every pick.
    steps = [macro_f1(y, sum([a, b, a, b, noise][m] for m in first.picks[: i + 1])) for i in range(len(first.picks))]
    assert all(later > earlier for earlier, later in zip(steps, steps[1:]))


def test_size_one_is_the_best_single(specialists):
    y, a, b, noise = specialists
    selection = caruana_ensemble([noise, b, a], y, size=1, n_classes=K)
    assert selection.picks == (selection.best_single,) and selection.weights == (1.0,)
    assert selection.f1 == selection.best_single_f1


@pytest.mark.parametrize(
    "bad, message",
    [(dict(size=0), "size"), (dict(oof_list=[]), "no candidates"), (dict(n_classes=5), "shape"),
     (dict(oof_list=[np.full((600, K), 1 / K), np.full((5, K), 1 / K)]), "same shape")],
)
def test_ensemble_rejects_bad_input(specialists, bad, message):
    y, a, _, _ = specialists
    args = dict(oof_list=[a], size=3, n_classes=K) | bad
    with pytest.raises(ValueError, match=message):
        caruana_ensemble(args.pop("oof_list"), y, **args)


# --- per-class offsets ----------------------------------------------------------------------


def biased_logits(seed=2, n=1500, shift=1.5, signal=2.0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, K, n)
    logits = rng.normal(0, 1, (n, K))
    logits[np.arange(n), y] += signal
    logits[:, 3] -= shift  # a model that under-predicts class 3
    folds = rng.integers(0, 5, n)
    return logits, y, folds


def test_offsets_recover_a_known_class_bias():
    logits, y, _ = biased_logits()
    offsets = fit_class_offsets(logits, y, n_classes=K)
    assert offsets.shape == (K,) and set(offsets) <= set(OFFSET_GRID)
    others = np.delete(offsets, 3)
    assert offsets[3] > 0.5 and offsets[3] - others.mean() > 0.8, offsets
    assert macro_f1(y, logits + offsets) > macro_f1(y, logits) + 0.03
    assert np.array_equal(offsets, fit_class_offsets(logits, y, n_classes=K)), "deterministic"


def test_offsets_stay_zero_when_nothing_can_improve():
    y = np.repeat(np.arange(K), 10)
    logits = np.log(np.eye(K)[y] * 0.9 + 0.1 / K)
    assert not fit_class_offsets(logits, y, n_classes=K).any()


def test_nested_gain_is_honest():
    logits, y, folds = biased_logits()
    plain, nested = nested_offset_gain(logits, y, folds, n_classes=K)
    in_sample = macro_f1(y, logits + fit_class_offsets(logits, y, n_classes=K))
    assert plain == pytest.approx(macro_f1(y, logits))
    assert plain + 0.02 < nested <= in_sample, "a real bias survives nesting, minus some optimism"

    # Without a bias to find, in-sample offsets still fit the noise; nested ones gain less.
    logits, y, folds = biased_logits(seed=3, n=300, shift=0.0, signal=0.8)
    plain, nested = nested_offset_gain(logits, y, folds, n_classes=K)
    in_sample = macro_f1(y, logits + fit_class_offsets(logits, y, n_classes=K))
    assert in_sample > plain
    assert nested - plain < in_sample - plain


def test_offset_input_is_checked():
    logits, y, folds = biased_logits(n=60)
    with pytest.raises(ValueError, match="two folds"):
        nested_offset_gain(logits, y, np.zeros_like(folds), n_classes=K)
    with pytest.raises(ValueError, match="one entry per image"):
        nested_offset_gain(logits, y, folds[:-1], n_classes=K)
    with pytest.raises(ValueError, match="0..5"):
        fit_class_offsets(logits, y + 1, n_classes=K)
    with pytest.raises(ValueError, match="NaN"):
        fit_class_offsets(np.full_like(logits, np.nan), y, n_classes=K)


# --- label issues ---------------------------------------------------------------------------


def noisy_labels(seed=4, n=400, n_classes=4, flips=20):
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, n_classes, n)
    probs = one_hot_probs(rng, truth, n_classes, right=truth, strength=25)
    y = truth.copy()
    flipped = rng.choice(n, flips, replace=False)
    y[flipped] = (truth[flipped] + rng.integers(1, n_classes, flips)) % n_classes
    return probs, y, truth, set(flipped.tolist())


def precision_recall(issues, flipped):
    found = {int(issue.image_id[3:]) for issue in issues}
    return len(found & flipped) / max(1, len(found)), len(found & flipped) / len(flipped)


def test_label_issues_find_the_flipped_labels():
    probs, y, truth, flipped = noisy_labels()
    ids = [f"img{i}" for i in range(len(y))]
    persons = [f"p{i // 7}" for i in range(len(y))]
    issues = find_label_issues(probs, y, image_ids=ids, person_ids=persons)
    precision, recall = precision_recall(issues, flipped)
    # cleanlab is conservative: over seeds 4..23 it finds 88 % of the flips, never a clean label.
    assert precision >= 0.9 and recall >= 0.75, (precision, recall)
    assert all(isinstance(issue, LabelIssue) for issue in issues)
    confidences = [issue.self_confidence for issue in issues]
    assert confidences == sorted(confidences), "most suspect first"
    first = issues[0]
    i = int(first.image_id[3:])
    assert (first.given, first.predicted, first.person_id) == (y[i], probs[i].argmax(), persons[i])
    assert first.self_confidence == pytest.approx(probs[i, y[i]])
    for issue in issues:
        if int(issue.image_id[3:]) in flipped:
            assert issue.predicted == truth[int(issue.image_id[3:])]
    assert find_label_issues(probs, y, image_ids=ids)[0].person_id is None


def test_label_issues_with_classes_absent_from_the_labels():
    # Six columns, but labels and truth use classes 0..3 only, as in a tiny dataset: no fold
    # model ever learnt classes 4 and 5, so they get next to no probability.
    probs4, y, _, flipped = noisy_labels(seed=5)
    probs = np.hstack([probs4, np.full((len(y), 2), 1e-4)])
    probs /= probs.sum(axis=1, keepdims=True)
    ids = [f"img{i}" for i in range(len(y))]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # cleanlab itself warns about each absent class
        issues = find_label_issues(probs, y, image_ids=ids)
    without = find_label_issues(probs4, y, image_ids=ids)
    assert [i.image_id for i in issues] == [i.image_id for i in without], "as if the empty columns were not there"
    assert [i.self_confidence for i in issues] == pytest.approx([i.self_confidence for i in without])
    precision, recall = precision_recall(issues, flipped)
    assert precision >= 0.9 and recall >= 0.6, (precision, recall)
    i = int(issues[0].image_id[3:])
    assert issues[0].self_confidence == pytest.approx(probs4[i, y[i]])


def test_label_issues_reject_what_they_cannot_rank():
    probs, y, _, _ = noisy_labels(n=40, flips=2)
    ids = [str(i) for i in range(40)]
    with pytest.raises(ValueError, match="two classes"):
        find_label_issues(probs, np.zeros(40, dtype=int), image_ids=ids)
    with pytest.raises(ValueError, match="one entry per image"):
        find_label_issues(probs, y, image_ids=ids[:-1])
    with pytest.raises(ValueError, match="non-negative"):
        find_label_issues(-probs, y, image_ids=ids)
    with pytest.raises(ValueError, match="integers"):
        find_label_issues(probs, y.astype(float), image_ids=ids)
