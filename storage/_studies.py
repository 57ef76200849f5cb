"""Creating, loading and summarising the studies in a storage."""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass
from datetime import datetime

import optuna
import sqlalchemy
import sqlalchemy.exc
from optuna.storages._rdb.models import TrialModel
from optuna.trial import TrialState

from maskopt.errors import StorageError

from ._urls import redact

_CREATE_ATTEMPTS = 5
_BACKOFF_S = (0.05, 0.3)


def create_or_load_study(
    *,
    storage: optuna.storages.RDBStorage,
    study_name: str,
    direction: str | tuple[str, ...] = "maximize",
    sampler: optuna.samplers.BaseSampler | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
) -> optuna.Study:
    """Create the study ``study_name``, or load it if it exists.

    Safe when several workers call it at the same instant: the ones that lose the race to
    insert the study load the winner's.

    Args:
        storage: From ``open_storage``.
        study_name: The study's name.
        direction: "maximize" or "minimize", or one of them per objective (a multi-objective study).
        sampler: Passed to Optuna; None means Optuna's default (TPE).
        pruner: Passed to Optuna; None means Optuna's default (median). Every worker of a
            study must build the same pruner: Optuna does not store it.

    Returns:
        The study.

    Raises:
        StorageError: If the study exists with another direction, or creating it keeps
            failing.

    Example:
        >>> study = create_or_load_study(storage=open_storage(None), study_name="demo")
    """
    for attempt in range(1, _CREATE_ATTEMPTS + 1):
        try:
            directions = (direction,) if isinstance(direction, str) else tuple(direction)
            study = optuna.create_study(
                storage=storage,
                study_name=study_name,
                directions=list(directions),
                sampler=sampler,
                pruner=pruner,
                load_if_exists=True,
            )
            break
        # load_if_exists covers the usual race (Optuna loads on DuplicatedStudyError); a
        # conflicting insert can still surface as a raw IntegrityError, and retrying loads.
        except (optuna.exceptions.DuplicatedStudyError, sqlalchemy.exc.IntegrityError) as e:
            if attempt == _CREATE_ATTEMPTS:
                raise StorageError(
                    f"Cannot create or load study {study_name!r} in {_url_of(storage)} after "
                    f"{attempt} attempts ({type(e).__name__}). Try again, or create the study "
                    "once before starting the workers."
                ) from e
            time.sleep(random.uniform(*_BACKOFF_S) * attempt)

    wanted = [optuna.study.StudyDirection[d.upper()] for d in directions]
    if study.directions != wanted:
        existing = ", ".join(d.name.lower() for d in study.directions)
        raise StorageError(
            f"Study {study_name!r} in {_url_of(storage)} exists and is set to {existing}, but "
            f"this run wants to {', '.join(directions)}. Use another study name, or the same direction."
        )
    return study


def load_existing_study(
    *,
    storage: optuna.storages.RDBStorage,
    study_name: str | None,
    sampler: optuna.samplers.BaseSampler | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
) -> optuna.Study:
    """Load a study that must already exist.

    Args:
        storage: From ``open_storage``.
        study_name: The study's name, or None to use the storage's only study.
        sampler: Passed to Optuna (None: its default).
        pruner: Passed to Optuna (None: its default).

    Returns:
        The study.

    Raises:
        StorageError: If the study does not exist, or ``study_name`` is None and the storage
            holds no study or several. The message lists the studies there.

    Example:
        >>> study = load_existing_study(storage=open_storage(None), study_name=None)
    """
    names = [s.study_name for s in storage.get_all_studies()]
    url = _url_of(storage)
    if not names:
        raise StorageError(
            f"Storage {url} holds no study. Create one with `maskopt search` (with the same "
            "`storage`)."
        )
    if study_name is None:
        if len(names) > 1:
            raise StorageError(
                f"Storage {url} holds {len(names)} studies: {', '.join(names)}. Name one "
                "(`study` NAME)."
            )
        study_name = names[0]
    elif study_name not in names:
        raise StorageError(
            f"No study {study_name!r} in {url}. Studies there: {', '.join(names)}."
        )
    return optuna.load_study(study_name=study_name, storage=storage, sampler=sampler, pruner=pruner)


@dataclass(frozen=True)
class StudySummary:
    """What ``maskopt studies`` shows about one study.

    Attributes:
        name: The study's name.
        direction: "maximize" or "minimize"; for a multi-objective study, one per objective,
            joined by ",".
        n_complete, n_pruned, n_fail, n_running, n_waiting: How many trials are in each state.
        best_value: The best COMPLETE trial's value; None without one, or for multi-objective
            studies.
        first_start: When the first trial started; None before any did.
        last_complete: When the last trial finished (complete, pruned or failed); None before
            any did.
        best_latency_ms: The best trial's CPU latency, ms per image at batch 1, where the study
            layer filled it in (``maskopt.search.study.record.study_summaries``, what ``maskopt
            studies`` shows); else None.
    """

    name: str
    direction: str
    n_complete: int
    n_pruned: int
    n_fail: int
    n_running: int
    n_waiting: int
    best_value: float | None
    first_start: datetime | None
    last_complete: datetime | None
    best_latency_ms: float | None = None

    @property
    def n_trials(self) -> int:
        """All trials, in any state."""
        return self.n_complete + self.n_pruned + self.n_fail + self.n_running + self.n_waiting

    def to_dict(self) -> dict:
        """A JSON-ready dict: the fields, with datetimes in ISO 8601."""
        data = asdict(self)
        for key in ("first_start", "last_complete"):
            if data[key] is not None:
                data[key] = data[key].isoformat()
        return data


_STATE_FIELDS = {
    TrialState.COMPLETE: "n_complete",
    TrialState.PRUNED: "n_pruned",
    TrialState.FAIL: "n_fail",
    TrialState.RUNNING: "n_running",
    TrialState.WAITING: "n_waiting",
}


def list_studies(storage: optuna.storages.RDBStorage) -> list[StudySummary]:
    """Summarise every study in a storage, oldest first.

    Counts trials with one aggregate query and reads only a few trials per study (the best,
    the first started, the last finished), so it stays fast on studies with many trials
    (``optuna.get_all_study_summaries`` loads every trial).

    Args:
        storage: From ``open_storage``.

    Returns:
        One StudySummary per study, in creation order. Datetimes are naive local time, as in
        Optuna's FrozenTrial.

    Example:
        >>> for s in list_studies(open_storage(None)):
        ...     print(s.name, s.n_complete, s.best_value)
    """
    # The `trials` table of Optuna's own models (private, but what RDBStorage itself queries):
    # its column names and state decoding hold on every backend and Optuna version.

    trials = TrialModel.__table__.c
    with storage.engine.connect() as connection:
        rows = connection.execute(
            sqlalchemy.select(trials.study_id, trials.state, sqlalchemy.func.count())
            .group_by(trials.study_id, trials.state)
        ).all()
        counts: dict[int, dict[str, int]] = {}
        for study_id, state, count in rows:
            counts.setdefault(study_id, {})[_STATE_FIELDS[state]] = count

        def edge_trial(study_id, column, last):
            # Read through storage.get_trial: how datetimes are stored changed in Optuna 5
            # (naive UTC, before: naive local), and FrozenTrial hides that.
            trial_id = connection.execute(
                sqlalchemy.select(trials.trial_id)
                .where(trials.study_id == study_id, column.is_not(None))
                .order_by(column.desc() if last else column.asc())
                .limit(1)
            ).scalar()
            return None if trial_id is None else storage.get_trial(trial_id)

        summaries = []
        for study in storage.get_all_studies():
            study_id = study._study_id  # FrozenStudy has no public id; the storage API needs it.
            by_state = {field: 0 for field in _STATE_FIELDS.values()}
            by_state.update(counts.get(study_id, {}))
            first = last = None
            if study_id in counts:
                first = edge_trial(study_id, trials.datetime_start, last=False)
                last = edge_trial(study_id, trials.datetime_complete, last=True)
            best_value = None
            if len(study.directions) == 1 and by_state["n_complete"]:
                best_value = storage.get_best_trial(study_id).value
            summaries.append(
                StudySummary(
                    name=study.study_name,
                    direction=",".join(d.name.lower() for d in study.directions),
                    best_value=best_value,
                    first_start=first and first.datetime_start,
                    last_complete=last and last.datetime_complete,
                    **by_state,
                )
            )
    return summaries


def _url_of(storage) -> str:
    return redact(getattr(storage, "url", repr(storage)))
