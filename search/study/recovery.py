"""Crash recovery: finding trials whose worker died, and queueing them to run again.

A trial left RUNNING by a dead worker would count towards the study's total forever. Optuna's
heartbeat finds such a worker anywhere once its grace period has passed; a worker on this machine
whose process is gone is known dead at once. Either way the trial is marked FAIL and retried with
the same parameters (Optuna's retry callback), and the retry resumes from its checkpoint.
"""

from __future__ import annotations

import os
import socket
import warnings
from datetime import datetime, timedelta

import optuna
from optuna.trial import FrozenTrial, TrialState

from maskopt.search.study.record import StudyRecord, TrialRecord


def this_worker() -> str:
    """This process as the ``worker`` attribute names it: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _worker_is_gone(worker: str | None) -> bool:
    """True when ``worker`` ("host:pid") is a process on this machine that no longer exists."""
    host, _, pid = (worker or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, run by another user
    return False


def heartbeat_on(study: optuna.Study) -> bool:
    # RDBStorage has heartbeats; other storages have no get_heartbeat_interval at all.
    interval = getattr(study._storage, "get_heartbeat_interval", None)
    return interval is not None and interval() is not None


def _grace_seconds(study: optuna.Study) -> float | None:
    """How long a trial may go without a heartbeat before it counts as dead (None: no heartbeats)."""
    if not heartbeat_on(study):
        return None
    backend = getattr(study._storage, "_backend", study._storage)  # Optuna wraps an RDBStorage in a cache
    return getattr(backend, "grace_period", None) or 2 * study._storage.get_heartbeat_interval()


def _is_dead(trial: FrozenTrial, grace: float | None) -> bool:
    """A RUNNING trial whose worker is gone: its process no longer exists on this machine, or it was
    never stamped by a worker although created longer ago than the heartbeat grace period.

    The unstamped case is a worker killed in the instant between Optuna creating the trial and the
    objective stamping it: no heartbeat was ever recorded either, so Optuna's check never finds it.
    """
    worker = TrialRecord.of(trial).worker
    if worker is not None:
        return _worker_is_gone(worker)
    started = trial.datetime_start
    return grace is not None and started is not None and datetime.now() - started > timedelta(seconds=grace)


def recover_dead_trials(study: optuna.Study) -> int:
    """Fail the RUNNING trials whose worker is dead and queue their retries; returns how many."""
    storage = study._storage
    heartbeat = heartbeat_on(study)
    with warnings.catch_warnings():  # experimental since Optuna 2.9; it is what optimize() calls too
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
        optuna.storages.fail_stale_trials(study)
        recovered = running - len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
    retry = storage.get_heartbeat_stale_trial_callback() if heartbeat else None
    grace = _grace_seconds(study)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not _is_dead(trial, grace):
            continue
        try:
            if not storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker failed it first; its retry is that worker's
        recovered += 1
        if retry is not None:
            retry(study, storage.get_trial(trial._trial_id))
    return recovered


def my_lost_trial(study: optuna.Study) -> FrozenTrial | None:
    """This worker's last trial if it is FAIL without a reason of its own, else None.

    That is a trial interrupted here (Ctrl-C, SIGTERM), or one that another worker marked FAIL
    as dead while this one could not reach the storage (a network partition): Optuna then
    refuses to record its result (``Cannot tell a FAIL trial``), which is right.
    """
    me = this_worker()
    mine = [t for t in study.get_trials(deepcopy=False) if TrialRecord.of(t).worker == me]
    if mine and mine[-1].state == TrialState.FAIL and not TrialRecord.of(mine[-1]).failed_on_its_own:
        return mine[-1]
    return None


def queue_interrupted_trial(study: optuna.Study, trial: FrozenTrial) -> bool:
    """Queue an interrupted ``trial`` again (same parameters and seeds, so it resumes from its
    checkpoint), unless a retry of it is already queued; True when this call queued it.

    However often a configuration was interrupted, it is queued: a stop signal is never the
    trial's fault (the retry limit is for trials whose worker keeps dying).
    """
    if StudyRecord.of(study).is_retried(trial.number):
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=None)(study, trial)
    return True


def live_origins(study: optuna.Study) -> set[int]:
    """Origins of the trials that may still resume: running ones, queued retries and promotions,
    and paused trials waiting for a promotion."""
    record = StudyRecord.of(study)
    return ({t.origin for t in record.trials((TrialState.RUNNING, TrialState.WAITING))}
            | {t.origin for t in record.paused()})
