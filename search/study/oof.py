"""What a study's out-of-fold (OOF) predictions are good for after the search.

Every trial of a person-grouped k-fold study predicts each image once, with the fold model
that did not train on it. Those ``(n_images, n_classes)`` probabilities are honest held-out
predictions for the whole train set, so they can be reused without new training:

- :func:`caruana_ensemble` picks a weighted ensemble of trials (greedy selection with
  replacement, Caruana et al. 2004);
- :func:`fit_class_offsets` fits per-class offsets on log-probabilities that raise macro F1,
  and :func:`nested_offset_gain` estimates the gain honestly, fitting on the other folds;
- :func:`find_label_issues` ranks images whose given label the predictions doubt (cleanlab).

Every score here is :func:`maskopt.search.train.metrics.macro_f1` with the PRESENT policy (the
classes in the labels or the predictions): the competition's metric, and the same function and
policy as the search's fold scores, so a trial's OOF score and its CV score agree.
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import optuna
from cleanlab.filter import find_label_issues as cleanlab_find

from maskopt.search.study import record
from maskopt.search.train.metrics import PRESENT, macro_f1, macro_f1_many
from maskopt.storage import artifact_store

OFFSET_GRID = np.round(np.linspace(-2.0, 2.0, 81), 10)
"""Offsets tried for each class by :func:`fit_class_offsets`: -2 to 2 in steps of 0.05."""
OFFSET_PASSES = 3
"""Most passes of coordinate ascent over the classes; a pass that changes nothing ends it."""


def _labels(y, n: int | None, n_classes: int) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or (n is not None and len(y) != n):
        raise ValueError(f"labels must be a 1-D array of {n} entries, got shape {y.shape}")
    if len(y) and not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {y.dtype}")
    if len(y) and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"labels must lie in 0..{n_classes - 1}, got {y.min()}..{y.max()}")
    return y.astype(np.intp)


def _matrix(a, name: str, n_classes: int | None = None) -> np.ndarray:
    a = np.asarray(a, dtype=float)
    if a.ndim != 2 or (n_classes is not None and a.shape[1] != n_classes):
        width = "n_classes" if n_classes is None else n_classes
        raise ValueError(f"{name} must have shape (n_images, {width}), got {a.shape}")
    if np.isnan(a).any():
        raise ValueError(f"{name} holds NaN")
    return a


# --- ensemble selection ---------------------------------------------------------------------


@dataclass(frozen=True)
class EnsembleSelection:
    """The ensemble :func:`caruana_ensemble` chose.

    Attributes
    ----------
    members : tuple of int
        Indices into the candidate list, ascending, each chosen at least once.
    weights : tuple of float
        Weight of each member (times chosen / picks), summing to 1.
    picks : tuple of int
        Every pick in order, the best single first; ``len(picks)`` is the ensemble's size.
    f1 : float
        OOF macro F1 of the weighted average of the members' probabilities.
    best_single : int
        Index of the best single candidate.
    best_single_f1 : float
        Its OOF macro F1.
    single_f1s : tuple of float
        OOF macro F1 of every candidate.
    """

    members: tuple[int, ...]
    weights: tuple[float, ...]
    picks: tuple[int, ...]
    f1: float
    best_single: int
    best_single_f1: float
    single_f1s: tuple[float, ...]

    def blend(self, probs_list: Sequence[np.ndarray]) -> np.ndarray:
        """The weighted average of the members' probabilities, e.g. on the eval images.

        ``probs_list`` holds one array per candidate, in the order given to the selection.
        """
        return sum(w * np.asarray(probs_list[m], dtype=float) for m, w in zip(self.members, self.weights))


def caruana_ensemble(oof_list: Sequence[np.ndarray], y, *, size: int, n_classes: int) -> EnsembleSelection:
    """Greedy ensemble selection with replacement (Caruana et al. 2004) on OOF probabilities.

    Starts from the best single candidate, then adds, one pick at a time, the candidate (any,
    including one already in) whose addition gives the averaged probabilities the highest
    macro F1. Stops after ``size`` picks, or earlier as soon as no addition strictly raises
    the F1: macro F1 of an argmax is a step function, so a pick that only ties would change
    the weights on no evidence. Ties go to the lowest index, so the result is deterministic.

    The F1 is measured on the same OOF rows the selection looks at, so ``f1`` is optimistic
    by a little; it can never fall below ``best_single_f1``.

    Parameters
    ----------
    oof_list : sequence of arrays, each (n_images, n_classes)
        OOF probabilities of each candidate (trial), rows in the same image order.
    y : array of int, shape (n_images,)
        Labels.
    size : int
        Most picks, counting the first; 1 gives the best single.
    n_classes : int
        Number of classes.

    Returns
    -------
    EnsembleSelection
    """
    if size < 1:
        raise ValueError(f"size must be at least 1, got {size}")
    if not len(oof_list):
        raise ValueError("no candidates to select from")
    probs = [_matrix(p, f"oof_list[{i}]", n_classes) for i, p in enumerate(oof_list)]
    if len({p.shape for p in probs}) > 1:
        raise ValueError(f"all candidates need the same shape, got {sorted({p.shape for p in probs})}")
    y = _labels(y, len(probs[0]), n_classes)

    singles = np.array([macro_f1(y, p, n_classes=n_classes, classes=PRESENT) for p in probs])
    best = int(np.argmax(singles))  # argmax returns the first of ties
    picks = [best]
    total = probs[best].copy()
    score = float(singles[best])
    while len(picks) < size:
        # The argmax of a sum equals that of the average, so no division is needed. One
        # candidate at a time keeps memory at one (n_images, n_classes) array.
        scores = np.array([macro_f1(y, total + p, n_classes=n_classes, classes=PRESENT) for p in probs])
        candidate = int(np.argmax(scores))
        if scores[candidate] <= score:
            break
        picks.append(candidate)
        total += probs[candidate]
        score = float(scores[candidate])
    counts = np.bincount(picks, minlength=len(probs))
    members = tuple(int(m) for m in np.flatnonzero(counts))
    return EnsembleSelection(
        members=members,
        weights=tuple(float(counts[m] / len(picks)) for m in members),
        picks=tuple(picks),
        f1=macro_f1(y, total, n_classes=n_classes, classes=PRESENT),
        best_single=best,
        best_single_f1=float(singles[best]),
        single_f1s=tuple(float(s) for s in singles),
    )


# --- per-class offsets ----------------------------------------------------------------------


def fit_class_offsets(
    log_probs,
    y,
    *,
    n_classes: int,
    grid: Sequence[float] = OFFSET_GRID,
    passes: int = OFFSET_PASSES,
) -> np.ndarray:
    """Per-class additive offsets on log-probabilities that raise the macro F1 of the argmax.

    Coordinate ascent from all zeros: for class 0, 1, ... in turn, try every ``grid`` value as
    that class's offset, the others fixed, and keep the best if it strictly beats the current
    one (ties go to the smallest ``|offset|``, then the lowest); up to ``passes`` passes, ending
    early when a pass changes nothing. Deterministic, and the F1 never falls.

    Parameters
    ----------
    log_probs : array, shape (n_images, n_classes)
        Log-probabilities (or logits; only differences within a row matter).
    y : array of int, shape (n_images,)
        Labels.
    n_classes : int
        Number of classes.
    grid : sequence of float
        Candidate offsets; by default -2 to 2 in steps of 0.05.
    passes : int
        Most passes over the classes.

    Returns
    -------
    ndarray of float, shape (n_classes,)
        Add to each row of ``log_probs`` before the argmax.
    """
    scores = _matrix(log_probs, "log_probs", n_classes)
    y = _labels(y, len(scores), n_classes)
    return _fit_offsets(scores, y, n_classes, _grid(grid), passes)


def _grid(grid) -> np.ndarray:
    grid = np.asarray(grid, dtype=float)
    if grid.ndim != 1 or not len(grid) or not np.isfinite(grid).all():
        raise ValueError("grid must be a non-empty 1-D sequence of finite offsets")
    # Visit in order of |offset|, then value, so the first of equal F1s is the preferred one.
    return grid[np.lexsort((grid, np.abs(grid)))]


def _fit_offsets(scores: np.ndarray, y: np.ndarray, n_classes: int, grid: np.ndarray, passes: int) -> np.ndarray:
    offsets = np.zeros(n_classes)
    if not len(y):
        return offsets
    columns = np.arange(n_classes)
    for _ in range(passes):
        changed = False
        for c in range(n_classes):
            shifted = scores + offsets
            others = shifted.copy()
            others[:, c] = -np.inf
            rival = others.argmax(axis=1)
            rival_score = others[np.arange(len(y)), rival]
            base = scores[:, c]
            # np.argmax picks the lowest index of ties: c wins a tie only against a higher rival.
            wins = np.where(
                (columns[c] < rival)[None, :],
                base[None, :] + grid[:, None] >= rival_score[None, :],
                base[None, :] + grid[:, None] > rival_score[None, :],
            )
            preds = np.where(wins, c, rival[None, :])
            f1s = macro_f1_many(y, preds, n_classes=n_classes, classes=PRESENT)
            current = macro_f1(y, shifted, n_classes=n_classes, classes=PRESENT)
            best = int(np.argmax(f1s))
            if f1s[best] > current + 1e-12 and grid[best] != offsets[c]:
                offsets[c] = grid[best]
                changed = True
        if not changed:
            break
    return offsets


class OffsetGain(NamedTuple):
    """Macro F1 without and with per-class offsets; the offsets of each fold come from the others."""

    uncalibrated: float
    nested: float


def nested_offset_gain(
    log_probs,
    y,
    folds,
    *,
    n_classes: int,
    grid: Sequence[float] = OFFSET_GRID,
    passes: int = OFFSET_PASSES,
) -> OffsetGain:
    """An honest estimate of what :func:`fit_class_offsets` adds to OOF macro F1.

    For each fold, offsets are fitted on the other folds' rows and applied to this fold's rows;
    the macro F1 of all rows' calibrated predictions, pooled, is set against that of the plain
    argmax. The in-sample gain (fitting and scoring on all rows) is optimistic; this one is
    not. The offsets to export are :func:`fit_class_offsets` on all rows.

    Parameters
    ----------
    log_probs : array, shape (n_images, n_classes)
        OOF log-probabilities.
    y : array of int, shape (n_images,)
        Labels.
    folds : array of int, shape (n_images,)
        Each image's validation fold; at least two distinct values.
    n_classes, grid, passes
        As for :func:`fit_class_offsets`.

    Returns
    -------
    OffsetGain
        ``(uncalibrated, nested)`` macro F1.
    """
    scores = _matrix(log_probs, "log_probs", n_classes)
    y = _labels(y, len(scores), n_classes)
    folds = np.asarray(folds)
    if folds.shape != y.shape:
        raise ValueError(f"folds must have one entry per image ({len(y)}), got shape {folds.shape}")
    fold_ids = np.unique(folds)
    if len(fold_ids) < 2:
        raise ValueError(f"need at least two folds, got {len(fold_ids)}")
    grid = _grid(grid)
    pred = np.empty(len(y), dtype=np.intp)
    for fold in fold_ids:
        held_out = folds == fold
        offsets = _fit_offsets(scores[~held_out], y[~held_out], n_classes, grid, passes)
        pred[held_out] = (scores[held_out] + offsets).argmax(axis=1)
    return OffsetGain(macro_f1(y, scores, n_classes=n_classes, classes=PRESENT),
                      macro_f1(y, pred, n_classes=n_classes, classes=PRESENT))


# --- label issues ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelIssue:
    """An image whose given label the OOF predictions doubt.

    Attributes
    ----------
    image_id : str
        The image, as given in ``image_ids``.
    person_id : str or None
        Its person (group), when ``person_ids`` was given.
    given : int
        The label in the data.
    predicted : int
        The argmax of the probabilities (may be a class absent from the labels).
    self_confidence : float
        Probability of the given label, renormalised over the classes that occur in the
        labels (the plain probability when every class occurs); lower is more suspect.
    """

    image_id: str
    person_id: str | None
    given: int
    predicted: int
    self_confidence: float


def find_label_issues(probs, y, *, image_ids: Sequence, person_ids: Sequence | None = None) -> list[LabelIssue]:
    """Images whose labels look wrong, most suspect first, by confident learning (cleanlab).

    Wraps ``cleanlab.filter.find_label_issues`` (pruning by noise rate, ranked by
    self-confidence). Classes that never occur in ``y`` are dropped from the probabilities,
    which are then renormalised, so the result is that of a dataset without those classes:
    cleanlab accepts absent classes, but warns about each and has no per-class threshold for
    them. (No OOF model learnt an absent class, so it has next to no probability anyway;
    images that truly belong to one are rarely found, with or without dropping it.)

    Parameters
    ----------
    probs : array, shape (n_images, n_classes)
        OOF probabilities (out-of-fold, or the issues are those the model memorised away).
    y : array of int, shape (n_images,)
        Given labels.
    image_ids : sequence, length n_images
        Names of the images, reported as ``str``.
    person_ids : sequence, optional
        The person of each image.

    Returns
    -------
    list of LabelIssue
        Ranked by ``self_confidence``, lowest first.

    Raises
    ------
    ValueError
        Shapes disagree, probabilities are negative or a row sums to 0, or fewer than two
        classes occur in ``y``.
    """
    probs = _matrix(probs, "probs")
    n, n_classes = probs.shape
    y = _labels(y, n, n_classes)
    if len(image_ids) != n or (person_ids is not None and len(person_ids) != n):
        raise ValueError(f"image_ids and person_ids need one entry per image ({n})")
    if (probs < 0).any() or not np.isfinite(probs).all():
        raise ValueError("probs must be finite and non-negative")
    present = np.flatnonzero(np.bincount(y, minlength=n_classes))
    if len(present) < 2:
        raise ValueError(f"finding label issues needs at least two classes in the labels, got {len(present)}")
    compact = probs[:, present]
    sums = compact.sum(axis=1, keepdims=True)
    if (sums <= 0).any():
        raise ValueError("a row of probs has no mass on the classes that occur in the labels")
    compact = compact / sums
    compact_y = np.searchsorted(present, y)


    ranked = cleanlab_find(compact_y, compact, return_indices_ranked_by="self_confidence", n_jobs=1)
    predicted = probs.argmax(axis=1)
    return [
        LabelIssue(
            image_id=str(image_ids[i]),
            person_id=None if person_ids is None else str(person_ids[i]),
            given=int(y[i]),
            predicted=int(predicted[i]),
            self_confidence=float(compact[i, compact_y[i]]),
        )
        for i in (int(i) for i in ranked)
    ]


# --- storing a trial's OOF probabilities ----------------------------------------------------


@dataclass(frozen=True)
class OutOfFold:
    """One trial's out-of-fold predictions, as stored.

    Attributes:
        probs: ``float32 [n_images, n_classes]`` (stored as float16: 2 bytes a number).
        labels: The official label of each image (what the score is measured on).
        folds: The validation fold of each image.
        dataset: The dataset's fingerprint, so OOF of other data is never mixed in.
    """

    probs: np.ndarray
    labels: np.ndarray
    folds: np.ndarray
    dataset: str


def save_oof(trial, oof: OutOfFold, artifact_dir) -> str:
    """Upload ``oof`` as an artifact of ``trial`` (``oof-trial-<n>.npz``) and record its id."""
    with tempfile.TemporaryDirectory(prefix="maskopt-oof-") as tmp:
        path = Path(tmp) / f"oof-trial-{trial.number}.npz"
        np.savez_compressed(path, probs=oof.probs.astype(np.float16), labels=oof.labels.astype(np.int16),
                            folds=oof.folds.astype(np.int16), dataset=np.array(oof.dataset))
        artifact_id = optuna.artifacts.upload_artifact(artifact_store=artifact_store(artifact_dir),
                                                       file_path=str(path), study_or_trial=trial,
                                                       mimetype="application/octet-stream")
    trial.set_user_attr(record.OOF_ARTIFACT, artifact_id)
    return artifact_id


def load_oof(trial: record.TrialRecord | optuna.trial.FrozenTrial, artifact_dir, dataset=None) -> OutOfFold | None:
    """The stored OOF predictions of a finished trial, or None when it has none, they are gone, or
    the file holds something other than what :func:`save_oof` writes (NaN, wrong shapes).

    With ``dataset``, only predictions of exactly that data count (its fingerprint, image and
    class counts): another dataset's rows would be mixed with the wrong labels.
    """
    if not isinstance(trial, record.TrialRecord):
        trial = record.TrialRecord.of(trial)
    artifact_id = trial.oof_artifact
    # artifact_store creates a missing folder: look first, so a typo leaves no empty folder behind.
    if not isinstance(artifact_id, str) or not Path(artifact_dir).is_dir():
        return None
    try:
        with artifact_store(artifact_dir).open_reader(artifact_id) as f:
            data = np.load(io.BytesIO(f.read()), allow_pickle=False)
            oof = OutOfFold(data["probs"].astype(np.float32), data["labels"].astype(np.int64),
                            data["folds"].astype(np.int64), str(data["dataset"]))
    except Exception:  # deleted, truncated, or another folder: the trial just has no OOF here
        return None
    n, n_classes = oof.probs.shape if oof.probs.ndim == 2 else (0, 0)
    # A file that is not what save_oof writes (NaN, negative or absent probabilities, labels or folds
    # that do not fit) counts as none: averaged in, it would spoil every other trial's predictions.
    if (not n_classes or not np.isfinite(oof.probs).all() or (oof.probs < 0).any()
            or oof.labels.shape != (n,) or oof.folds.shape != (n,)
            or (n and (oof.labels.min() < 0 or oof.labels.max() >= n_classes or oof.folds.min() < 0))):
        return None
    if dataset is not None and (oof.dataset != dataset.fingerprint()
                                or oof.probs.shape != (len(dataset), dataset.num_classes)):
        return None
    return oof
