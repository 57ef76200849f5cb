"""Pausing and promoting trials: what a search does around the ``asha`` pruner (search/space/asha.py).

The pruner stops a trial at a rung unless it ranks in the top 1/eta there; the objective then
keeps its checkpoint and marks it paused (a PRUNED trial with a ``paused`` attribute: it did
stop, and optuna-dashboard, the report and the export read it as any pruned trial). Between
trials, every worker looks for a paused trial that now ranks in the top 1/eta of its rung, as
later trials arrived there below it, and *promotes* it: a new trial with the same configuration
is enqueued (Optuna runs queued trials before sampling new ones) with a ``continues`` attribute,
and continues from the paused trial's checkpoint, replaying its reports, at the seeds every trial
of that configuration trains with. Its scores are those the paused trial would have reached had
it never stopped. The continuation does not count towards the study's total of trials: the total
counts configurations.

Highest rungs are promoted first, best value first. A worker promoting (or evicting, below) a
paused trial holds a marker file beside the checkpoints while it updates the storage
(``os.O_EXCL``: one worker wins), then checks that no continuation was queued meanwhile, so a
paused trial is continued once and never loses its checkpoint to an eviction while promoted. A
trial whose checkpoint is not in this machine's checkpoint folder is not promoted here; its
continuation, queued elsewhere, may still be run here, from zero (with a note), unless the
workers share the folder.

Disk: the checkpoints of at most ``max_paused`` paused trials are kept (pruner option, 16 by
default); beyond it, those least likely to be promoted (lowest rank at their rung, as a fraction
of the rung's configurations) are deleted, and their trials stay stopped. The checkpoint folder
then holds at most ``max_paused`` + (running trials) checkpoints.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

import optuna
from optuna.trial import TrialState

from maskopt.search.space.asha import AshaPruner, config_key, ranks_on, rung_values
from maskopt.search.study.checkpoints import CheckpointStore
from maskopt.search.study.record import StudyRecord, TrialRecord, continuation_attrs

logger = logging.getLogger(__name__)


def next_promotion(study: optuna.Study, pruner: AshaPruner,
                   resumable: Callable[[TrialRecord], bool]) -> TrialRecord | None:
    """The paused trial to continue now, or None: one that ranks in the top 1/eta of its rung,
    whose configuration no other trial is running or has taken further, highest rung first,
    then best value."""
    frozen = study.get_trials(deepcopy=False)
    busy = {config_key(t.params) for t in frozen if t.state in (TrialState.RUNNING, TrialState.WAITING)}
    rungs = {step: rung_values(frozen, step) for step in pruner.rungs}
    reached = {}  # configuration -> the furthest step any of its trials reported
    for t in frozen:
        if t.state != TrialState.FAIL and t.last_step is not None:
            key = config_key(t.params)
            reached[key] = max(reached.get(key, -1), t.last_step)
    candidates = []
    for paused in StudyRecord.of(study).paused():
        key, step = config_key(paused.params), paused.paused_at
        value = rungs.get(step, {}).get(key)
        if (value is None or key in busy or reached.get(key, -1) > step
                or not ranks_on(value, rungs[step], pruner.reduction_factor) or not resumable(paused)):
            continue
        candidates.append((step, value, -paused.number, paused))
    return max(candidates, key=lambda c: c[:3])[3] if candidates else None


def promote(study: optuna.Study, store: CheckpointStore | None) -> TrialRecord | None:
    """Enqueue the continuation of the paused trial to promote now, if any; returns the paused trial.

    Nothing is promoted without checkpoints, or when another worker promoted (or evicted) it first.
    """
    pruner = study.pruner
    if not isinstance(pruner, AshaPruner) or store is None:
        return None
    paused = next_promotion(study, pruner, resumable=lambda t: store.path(t.origin).is_file())
    if paused is None:
        return None
    with _claimed(study, store, paused) as claimed:
        if not claimed:
            return None
        study.enqueue_trial(paused.params, user_attrs=continuation_attrs(paused))
    logger.info("trial %d is promoted: it continues from its checkpoint at step %d", paused.number,
                paused.paused_at + 1)
    return paused


@contextlib.contextmanager
def _claimed(study: optuna.Study, store: CheckpointStore, paused: TrialRecord) -> Iterator[bool]:
    """Hold paused trial ``paused``'s claim while it is promoted or evicted; yields False when
    another worker holds it, or has promoted the trial meanwhile (it then has a continuation).

    The claim (a marker file, see ``CheckpointStore.claim``) lasts only while the storage is
    updated: once a continuation is queued, the study itself says the trial was promoted.
    """
    if not store.claim(paused.number):
        yield False
        return
    try:
        yield paused.number in {t.number for t in StudyRecord.of(study).paused()}
    finally:
        store.release(paused.number)


def to_evict(study: optuna.Study, pruner: AshaPruner, resumable: Callable[[TrialRecord], bool]) -> list[TrialRecord]:
    """The paused trials beyond the pruner's ``max_paused`` whose checkpoints go, those least likely
    to be promoted first (the largest fraction of their rung's configurations ranking above them)."""
    kept = [t for t in StudyRecord.of(study).paused() if resumable(t)]
    excess = len(kept) - pruner.max_paused
    if excess <= 0:
        return []
    frozen = study.get_trials(deepcopy=False)
    rungs = {step: rung_values(frozen, step) for step in pruner.rungs}

    def standing(t: TrialRecord) -> float:
        values = rungs.get(t.paused_at, {})
        mine = values.get(config_key(t.params), float("-inf"))
        return sum(v > mine for v in values.values()) / max(1, len(values))

    return sorted(kept, key=lambda t: (-standing(t), t.number))[:excess]


def keep_paused_within(study: optuna.Study, store: CheckpointStore | None) -> None:
    """Delete the checkpoints of the paused trials beyond the pruner's ``max_paused`` (:func:`to_evict`)."""
    pruner = study.pruner
    if not isinstance(pruner, AshaPruner) or store is None:
        return
    evicted = []
    for t in to_evict(study, pruner, resumable=lambda t: store.path(t.origin).is_file()):
        with _claimed(study, store, t) as claimed:  # not while a worker promotes it
            if claimed:
                store.remove(t.origin)
                evicted.append(t.number)
    if evicted:
        logger.info("paused trial%s %s: checkpoint%s deleted to keep %d paused (study.pruner.max_paused); "
                    "stopped for good", "s" if len(evicted) > 1 else "", ", ".join(map(str, evicted)),
                    "s" if len(evicted) > 1 else "", pruner.max_paused)
