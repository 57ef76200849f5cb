"""Person-grouped, class-stratified k-fold splits.

The seven photos of one person must never sit in both training and validation: teams that split
by image saw 0.98 validation F1 against 0.69 on the leaderboard. scikit-learn's
``StratifiedGroupKFold`` keeps groups whole and class ratios close to the whole set's.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from maskopt.errors import DataError


def person_folds(labels, groups, *, n_folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(train_indices, val_indices)`` for each of ``n_folds`` folds.

    Deterministic for a seed, so every trial and every worker of a study sees the same folds.

    Raises:
        DataError: Fewer groups than folds, fewer than two folds, or no class with an image
            per fold (1000 classes of one image each).
    """
    labels = np.asarray(labels)
    groups = np.asarray(groups)
    n_groups = len(np.unique(groups))
    if n_folds < 2:
        raise DataError(f"folds must be at least 2, got {n_folds}")
    if n_groups < n_folds:
        raise DataError(f"{n_folds} folds need at least {n_folds} persons (groups), but the dataset has {n_groups}")
    _, class_sizes = np.unique(labels, return_counts=True)
    if len(class_sizes) and class_sizes.max() < n_folds:
        # StratifiedGroupKFold refuses (with a bare ValueError) when no class has an image per fold.
        raise DataError(
            f"{n_folds} folds need at least one class with {n_folds} or more images, but each of the dataset's "
            f"{len(class_sizes)} classes has at most {class_sizes.max()}; use fewer folds (study.folds in the "
            "space, at least 2) or give the classes more images"
        )
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # Rare classes (the oldest band) may have fewer members than folds; the split is still
        # the best stratification possible, so the warning tells the user nothing to act on.
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        try:
            return [(train, val) for train, val in splitter.split(np.zeros(len(labels)), labels, groups)]
        except ValueError as e:  # a case the checks above missed: still the user's data, not a bug here
            raise DataError(f"cannot split the dataset into {n_folds} person-grouped folds: {e}") from e
