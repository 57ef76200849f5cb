"""Training seeds: which random numbers a fold of a trial trains with."""

from __future__ import annotations

import hashlib
import json

from maskopt.search.train.params import TrialParams


def fold_seed(study_seed: int, params: TrialParams, fold: int) -> int:
    """The training seed of one fold of one configuration: a hash of (study seed, parameters, fold).

    Not of the trial's number: which number a configuration gets depends on which of several
    workers samples it first, and a configuration must score the same whoever runs it. A retry
    (its worker died) and a resumed checkpoint have the same parameters, so they keep its seeds.
    The export retrains the whole data as fold ``folds`` (one past the last).
    """
    key = json.dumps({"seed": study_seed, "params": params.as_dict(), "fold": fold}, sort_keys=True)
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") % 2**31
