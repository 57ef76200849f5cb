"""The one macro F1 of maskopt, with an explicit policy for which classes it averages over.

One function, because its numbers are compared with each other: the search's fold scores
(a trial's CV score), ``maskopt score`` on a solution file, the out-of-fold (OOF) scores of
trials, the ensemble selection and the per-class offsets fitted on those OOF predictions
must agree. Two macro F1s that differ only when a class is empty (one averaging over the
classes that occur, one over every class) made a trial's CV score and its OOF score disagree
on such data, and a calibration tuned to the one be judged by the other.

There are two policies (:class:`ClassPolicy`):

- :data:`PRESENT`: average over the classes that occur in the truth or in the prediction.
  This is the competition's metric and scikit-learn's default (``f1_score(average="macro",
  zero_division=0)``), and it is the policy every caller in maskopt uses.
- :data:`ALL`: average over every class ``0 .. n_classes - 1``; a class with no true and no
  predicted image scores 0. It is for a caller that wants an absent class to cost (e.g. to
  compare runs on subsets that miss different classes on one scale); nothing in maskopt
  uses it today.

Both are computed from counts (``np.bincount``), about 50 times faster than
``sklearn.metrics.f1_score``, so they can sit in the inner loops of ensemble selection and
offset fitting; the tests check them against scikit-learn.
"""

from __future__ import annotations

import enum

import numpy as np


class ClassPolicy(enum.Enum):
    """Which classes a macro F1 averages over."""

    PRESENT = "present"
    """The classes that occur in the truth or the prediction (the competition, scikit-learn)."""
    ALL = "all"
    """Every class ``0 .. n_classes - 1``; a class absent from both scores 0."""


PRESENT = ClassPolicy.PRESENT
ALL = ClassPolicy.ALL


def macro_f1(y_true, predicted, *, n_classes: int, classes: ClassPolicy = PRESENT) -> float:
    """Macro F1 of predictions against labels.

    Parameters
    ----------
    y_true : array of int, shape (n,)
        True labels, each in ``0 .. n_classes - 1``.
    predicted : array, shape (n,) or (n, n_classes)
        Predicted labels, or probabilities / scores whose row-wise argmax is the prediction.
    n_classes : int
        Number of classes (for probabilities, their width).
    classes : ClassPolicy
        :data:`PRESENT` (default, the competition's metric) or :data:`ALL`.

    Returns
    -------
    float
        The mean per-class F1 over the classes the policy names; 0.0 when there are none.

    Raises
    ------
    ValueError
        Lengths differ, a shape is wrong, or a label lies outside ``0 .. n_classes - 1``.
    """
    pred = np.asarray(predicted)
    if pred.ndim == 2:
        if pred.shape[1] != n_classes:
            raise ValueError(f"probabilities must have shape (n, {n_classes}), got {pred.shape}")
        pred = pred.argmax(axis=1)
    elif pred.ndim != 1:
        raise ValueError(f"predicted must be labels (n,) or probabilities (n, n_classes), got shape {pred.shape}")
    y = _labels(y_true, "y_true", n_classes)
    if y.ndim != 1:
        raise ValueError(f"y_true must be a 1-D array of labels, got shape {y.shape}")
    if len(y) != len(pred):
        raise ValueError(f"{len(y)} labels but {len(pred)} predictions")
    pred = _labels(pred, "predicted", n_classes)
    return float(_many(y, pred[None, :], n_classes, _policy(classes))[0])


def macro_f1_many(y_true, preds, *, n_classes: int, classes: ClassPolicy = PRESENT) -> np.ndarray:
    """:func:`macro_f1` of each row of predicted labels at once.

    Parameters
    ----------
    y_true : array of int, shape (n,)
        True labels.
    preds : array of int, shape (m, n)
        ``m`` rows of predicted labels (labels, not probabilities).
    n_classes, classes
        As for :func:`macro_f1`.

    Returns
    -------
    ndarray of float, shape (m,)
    """
    y = _labels(y_true, "y_true", n_classes)
    if y.ndim != 1:
        raise ValueError(f"y_true must be a 1-D array of labels, got shape {y.shape}")
    preds = np.asarray(preds)
    if preds.ndim != 2 or preds.shape[1] != len(y):
        raise ValueError(f"preds must have shape (m, {len(y)}) for {len(y)} labels, got {preds.shape}")
    return _many(y, _labels(preds, "preds", n_classes), n_classes, _policy(classes))


def _policy(classes) -> ClassPolicy:
    if not isinstance(classes, ClassPolicy):
        raise ValueError(f"classes must be PRESENT or ALL (a ClassPolicy), got {classes!r}")
    return classes


def _labels(a, name: str, n_classes: int) -> np.ndarray:
    """``a`` as ``intp`` labels, each in ``0 .. n_classes - 1`` (any shape; callers check it)."""
    a = np.asarray(a)
    if a.size == 0:
        return a.astype(np.intp)
    if not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name} must hold integer labels, got dtype {a.dtype}")
    low, high = a.min(), a.max()
    if low < 0 or high >= n_classes:
        raise ValueError(f"{name} must lie in 0..{n_classes - 1}, got {low}..{high}")
    return a.astype(np.intp, copy=False)


def _many(y: np.ndarray, preds: np.ndarray, n_classes: int, classes: ClassPolicy) -> np.ndarray:
    """The kernel: per-row macro F1 from true-positive, true and predicted counts."""
    m = len(preds)
    rows = np.arange(m)[:, None] * n_classes
    flat = (rows + preds).ravel()
    true_pos = np.bincount(flat[(preds == y[None, :]).ravel()], minlength=m * n_classes).reshape(m, n_classes)
    predicted = np.bincount(flat, minlength=m * n_classes).reshape(m, n_classes)
    support = predicted + np.bincount(y, minlength=n_classes)[None, :]
    f1 = np.divide(2 * true_pos, support, out=np.zeros((m, n_classes)), where=support > 0)
    if classes is ALL:
        return f1.mean(axis=1) if n_classes else np.zeros(m)
    counted = (support > 0).sum(axis=1)
    return np.divide(f1.sum(axis=1), counted, out=np.zeros(m), where=counted > 0)
