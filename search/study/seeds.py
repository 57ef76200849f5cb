"""Training seeds: which random numbers a fold of a trial trains with."""

from __future__ import annotations


def fold_seed(study_seed: int, trial_number: int, fold: int) -> int:
    """The training seed of one fold of one trial: reproducible, distinct across trials.

    ``trial_number`` is the trial as first run: a retry (its worker died) trains with its
    original's seeds, so it scores as the original would have. The export retrains the whole
    data as fold ``folds`` (one past the last).
    """
    return (study_seed * 1_000_003 + trial_number * 101 + fold) % (2**31)
