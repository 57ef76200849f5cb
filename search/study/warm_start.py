"""Warm start: the best configurations of an earlier study, queued to run first in this one.

An earlier study (another dataset, or the same data before a change of space or code) knows which
configurations did well. :func:`enqueue_warm_start` takes its top complete trials that ran every
fold, best first, maps each onto the current space and enqueues it, so the first trials of this
study train them before the sampler proposes anything:

- a parameter the current space searches and whose dimension allows the value is kept, as the
  space names it (a choice's own value, an integer as an integer);
- a value the dimension no longer allows (a choice no longer listed, a number out of the range or
  off its step), and a parameter the space does not search (a constant now, or unknown to maskopt),
  is dropped, with one note naming the trial, the parameter, the value and why; the sampler then
  proposes that parameter, as for any parameter the earlier study did not search;
- a configuration left with nothing searched is skipped, and one that maps onto a configuration
  already queued is queued once.

Whether a value is allowed is Optuna's own check of an enqueued value against the distribution
``SearchSpace.suggest`` asks for (the check behind its "out of range" warning): a value it lets
through is one the trial would really train with.

Each queued trial records where its configuration came from (``TrialRecord.warm_start``), which
makes the warm start idempotent: rerunning the command (resuming the study) queues nothing again.
With several worker processes, the parent queues them once before the workers start.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from maskopt.errors import MaskoptError, StorageError, shorten
from maskopt.search.space import Choice, Constant, Range, SearchSpace
from maskopt.search.space.components import _quietly
from maskopt.search.study import record
from maskopt.search.study.describe import format_value
from maskopt.search.study.record import StudyRecord, WarmStartOrigin
from maskopt.storage import redact, resolve_url

# The notes go where the dataset's go: printed once as "note: ...", left out by the workers.
notes_logger = logging.getLogger("maskopt.search.notes")

DEFAULT_TOP = 5


@dataclass(frozen=True)
class WarmStart:
    """What a warm start queued, and what it left out.

    Attributes:
        source: The earlier study's name.
        enqueued: Each queued configuration with the trial of the earlier study it came from,
            in the order they run.
        notes: One line per value dropped, configuration skipped or left out, and a summary.
    """

    source: str
    enqueued: tuple[tuple[WarmStartOrigin, dict[str, Any]], ...]
    notes: tuple[str, ...]


def check_warm_start(source_study: str | None, source_storage: str | None, top: int, *, study: str,
                     storage: str | None) -> None:
    """Refuse warm-start arguments that cannot work, before the search touches its own storage.

    The source study is opened (read only) to see that it exists.

    Args:
        source_study: The earlier study (None: no warm start).
        source_storage: Its storage (None: ``storage``).
        top: How many of its best trials to queue.
        study: The name of the study to warm-start.
        storage: That study's storage.

    Raises:
        MaskoptError: A storage without a study, ``top`` below 1, or the study itself as its source.
        StorageError: The source storage or study cannot be read.
    """
    if source_study is None:
        if source_storage is not None:
            raise MaskoptError("`warm_start_storage` names the storage of the study to warm-start from: give that "
                               "study's name in `warm_start` too")
        return
    _check_arguments(source_study, source_storage, top, study=study, storage=storage)
    _open_source(source_study, resolve_url(source_storage or storage))


def _check_arguments(source_study: str, source_storage: str | None, top: int, *, study: str,
                     storage: str | None) -> None:
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise MaskoptError(f"`warm_start_top` must be a whole number of at least 1, got {top!r}")
    if source_study == study and _same_storage(source_storage or storage, storage):
        raise MaskoptError(f"study {study!r} cannot warm-start from itself: give `warm_start` an earlier study "
                           f"(and `warm_start_storage` its storage, when it lives elsewhere)")


def _open_source(name: str, url: str) -> StudyRecord:
    try:
        return StudyRecord.open(url, name)
    except StorageError as e:
        raise StorageError(f"cannot warm-start from study {name!r} in {redact(url)}: {e} (`warm_start` names the "
                           f"earlier study, `warm_start_storage` its storage, by default this search's own)") from e


def enqueue_warm_start(study: optuna.Study, space: SearchSpace, *, storage: str | None, source_study: str,
                       source_storage: str | None = None, top: int = DEFAULT_TOP,
                       room: int | None = None) -> WarmStart:
    """Queue the best configurations of ``source_study`` to run first in ``study``.

    The source is only read. Each note is also logged (``maskopt.search.notes``, INFO).

    Args:
        study: The study to warm-start, as ``open_search`` left it.
        space: Its space, fitted to the dataset (``OpenedSearch.space``).
        storage: ``study``'s storage URL (None: the SQLite default).
        source_study: The earlier study.
        source_storage: Its storage (None: ``storage``).
        top: Its best complete trials that ran every fold to queue, best first.
        room: Trials the study may still start before its total (None: no limit); configurations
            beyond it are left out, with a note, so that the warm start never runs past the total.

    Returns:
        What was queued and the notes; nothing is queued when ``study`` was warm-started from
        ``source_study`` before (a rerun of the same command), or when the source has no complete
        trial (a note says so).

    Raises:
        MaskoptError: ``study`` is its own source, or ``top`` is below 1.
        StorageError: The source storage or study cannot be read; the message names both, the
            storage's password hidden.
    """
    _check_arguments(source_study, source_storage, top, study=study.study_name, storage=storage)
    url = resolve_url(source_storage or storage)
    current = StudyRecord.of(study)
    earlier = sorted({t.number for t in current.trials() if t.warm_start and t.warm_start.study == source_study})
    if earlier:
        note = (f"warm start: study {study.study_name!r} was warm-started from {source_study!r} before (its trials "
                f"{_numbers(earlier)}): nothing queued again")
        return _done(source_study, (), [note])
    best = _open_source(source_study, url).top(top)
    if not best:
        note = f"warm start: study {source_study!r} has no complete trial that ran every fold: nothing to warm-start from"
        return _done(source_study, (), [note])

    distributions = _distributions(space)
    notes, queued, seen = [], [], {}
    for trial in best:
        origin = WarmStartOrigin(source_study, trial.number)
        params = {}
        for name, value in trial.params.items():
            why = _why_dropped(space, distributions, name, value)
            if why is None:
                dist = distributions[name]
                params[name] = dist.to_external_repr(dist.to_internal_repr(value))
            else:
                # The storage may hold any name and value: shortened, so that a note stays a line.
                notes.append(f"warm start: trial {trial.number} of {source_study!r}: "
                             f"{shorten(f'{name}={format_value(value)}')} dropped: {why}")
        key = tuple(sorted(params.items(), key=lambda item: item[0]))
        if not params:
            notes.append(f"warm start: trial {trial.number} of {source_study!r} keeps no parameter this space "
                         f"searches: skipped")
        elif key in seen:
            notes.append(f"warm start: trial {trial.number} of {source_study!r} is trial {seen[key]}'s configuration "
                         f"once its dropped values are gone: queued once")
        else:
            seen[key] = trial.number
            queued.append((origin, params))
    if room is not None and len(queued) > room:
        left = queued[max(room, 0):]
        notes.append(f"warm start: `trials` leaves room for {max(room, 0)} more trial(s): the configurations of "
                     f"trials {_numbers(o.trial for o, _ in left)} of {source_study!r} are left out")
        queued = queued[:max(room, 0)]
    enqueued = []
    for origin, params in queued:
        before = len(study.get_trials(deepcopy=False))
        with _quietly():  # Optuna's own line for a configuration already there; the note below says it
            study.enqueue_trial(params, user_attrs={record.WARM_START: origin.to_attr()}, skip_if_exists=True)
        if len(study.get_trials(deepcopy=False)) > before:
            enqueued.append((origin, params))
        else:
            notes.append(f"warm start: trial {origin.trial} of {source_study!r}: this study holds its configuration "
                         f"already: not queued")
    if enqueued:
        notes.append(f"warm start: {len(enqueued)} configuration(s) of study {source_study!r} in {redact(url)} "
                     f"(trials {_numbers(o.trial for o, _ in enqueued)}) queued to run first")
    return _done(source_study, tuple(enqueued), notes)


def _done(source: str, queued: tuple, notes: list[str]) -> WarmStart:
    for note in notes:
        notes_logger.info(note)
    return WarmStart(source, queued, tuple(notes))


def _numbers(numbers) -> str:
    return ", ".join(str(n) for n in numbers)


def _distributions(space: SearchSpace) -> dict[str, optuna.distributions.BaseDistribution]:
    """The Optuna distribution of each searched parameter, as the space's own ``suggest`` asks for it."""
    with _quietly():
        trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
        space.suggest(trial)
    return trial.distributions


def _why_dropped(space: SearchSpace, distributions: dict, name: str, value) -> str | None:
    """Why ``name=value`` of an earlier trial cannot run in ``space``, or None when it can."""
    dim = space.dims.get(name)
    if dim is None:
        return "maskopt has no such parameter"
    if isinstance(dim, Constant):
        same = " (the same value)" if dim.value == value else ""
        return f"this space does not search it: it fixes {name} to {format_value(dim.value)}{same}"
    dist = distributions[name]
    try:
        # Optuna's own check of an enqueued value: what it would warn about, and train with anyway.
        allowed = dist._contains(dist.to_internal_repr(value))
    except (ValueError, TypeError):
        allowed = False
    if allowed:
        return None
    if isinstance(dim, Choice):
        return f"not one of this space's choices ({', '.join(format_value(v) for v in dim.values)})"
    assert isinstance(dim, Range)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and dim.low <= value <= dim.high:
        # In the range and not allowed: off the step (1 for a whole-number range without one).
        return f"off this space's step {format_value(dim.step or 1)} from {format_value(dim.low)}"
    return f"outside this space's range [{format_value(dim.low)}, {format_value(dim.high)}]"


def _same_storage(a: str | None, b: str | None) -> bool:
    """True when two storage URLs name one database: the same SQLite file, or the same server and database."""
    a, b = resolve_url(a), resolve_url(b)
    try:
        first, second = make_url(a), make_url(b)
    except ArgumentError:
        return a == b

    def place(url):
        backend = url.get_backend_name()
        if backend == "sqlite" and url.database not in (None, "", ":memory:"):
            return backend, str(Path(url.database).resolve())
        return backend, url.host, url.port, url.database

    return place(first) == place(second)
