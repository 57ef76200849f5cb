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


def retry_callback(study: optuna.Study):
    """What queues a failed trial again: the storage's own callback when heartbeats are on, so its
    ``max_retry`` holds for both paths."""
    callback = getattr(study._storage, "get_heartbeat_stale_trial_callback", lambda: None)()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return callback or optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2)


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
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not _worker_is_gone(TrialRecord.of(trial).worker):
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


def queue_retry(study: optuna.Study, trial: FrozenTrial) -> bool:
    """Queue ``trial`` again unless a retry of it is already queued; True when this call queued it."""
    if StudyRecord.of(study).is_retried(trial.number):
        return False
    retry_callback(study)(study, trial)
    return True


def live_origins(study: optuna.Study) -> set[int]:
    """Origins of the trials that may still resume: running ones and queued retries."""
    return {t.origin for t in StudyRecord.of(study).trials((TrialState.RUNNING, TrialState.WAITING))}
