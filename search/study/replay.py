"""Replay a search on recorded learning curves, in simulated wall time.

A :class:`Curves` table holds configurations trained to the full budget: every fold's macro F1
and seconds after every epoch (``benchmarks/curves.py`` records grids of them;
:func:`study_curves` reads one from a finished study). :func:`replay` runs any sampler and pruner
of maskopt's catalogue (``build_sampler``, ``build_pruner``) against it, nothing trained:

- an in-memory Optuna study, driven through Optuna's ask-and-tell interface as ``workers``
  parallel workers would drive it: an event queue in simulated time, in which each running trial
  reports step after step at its recorded time;
- the reports go through :class:`PruningSteps`, so the pruner sees exactly the steps and values a
  real search reports, and is asked where the objective asks it (never at the last step); a
  pruned trial frees its worker at the step it was pruned, a finished one at its last epoch;
- a proposal maps to its recorded configuration: on a grid (every dimension a choice, every
  combination recorded) exactly, otherwise to the nearest one in normalised parameter space.

A trial scores what a search records: the mean over folds of each fold's best epoch. One sampler
serves every worker, as in Optuna's own ``n_jobs`` threads (maskopt's worker processes each seed
their own, which changes which random start-up trials they draw, not how the sampler learns).
Replays are deterministic for a seed; a hundred trials replay in about a tenth of a second.
"""

from __future__ import annotations

import dataclasses
import gzip
import heapq
import itertools
import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from maskopt.errors import MaskoptError
from maskopt.search.space import (
    PARAMS,
    PRUNERS,
    SAMPLERS,
    Choice,
    Component,
    Constant,
    PruningSteps,
    Range,
    StudySettings,
    build_pruner,
    build_sampler,
)
from maskopt.search.space.components import _quietly
from maskopt.search.space.schema import Dimension
from maskopt.search.space.asha import AshaPruner
from maskopt.search.study.record import StudyRecord, TrialRecord, continuation_attrs, pause_attrs
from maskopt.search.study.scheduler import next_promotion, to_evict

FORMAT = "maskopt-curves/1"


@dataclass(frozen=True)
class Curves:
    """Learning curves of configurations trained to the full budget: every fold, every epoch.

    Attributes:
        dims: The searched parameters: a ``Choice`` of values or a ``Range``, as in a space.
        configs: Each configuration's values of ``dims``.
        f1: Validation macro F1, ``[configuration, fold, epoch]``.
        seconds: Each epoch's seconds (a fold's first epoch includes building its model), same shape.
        about: Where the table came from (command, date, machine, ...), kept as it is.
    """

    dims: Mapping[str, Dimension]
    configs: tuple[Mapping[str, Any], ...]
    f1: np.ndarray
    seconds: np.ndarray
    about: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        shape = (len(self.configs), *np.shape(self.f1)[1:])
        if np.ndim(self.f1) != 3 or np.shape(self.f1) != shape or np.shape(self.seconds) != shape or not self.configs:
            raise MaskoptError(f"a curves table needs F1 and seconds of shape [configurations, folds, epochs] for "
                               f"{len(self.configs)} configuration(s); got {np.shape(self.f1)} and "
                               f"{np.shape(self.seconds)}")
        if not (np.all(np.isfinite(self.f1)) and np.all(np.isfinite(self.seconds)) and np.all(self.seconds >= 0)):
            raise MaskoptError("a curves table holds a non-finite F1 or a negative or non-finite time")

    @property
    def folds(self) -> int:
        return self.f1.shape[1]

    @property
    def epochs(self) -> int:
        return self.f1.shape[2]

    @property
    def values(self) -> np.ndarray:
        """Each configuration's score as a search records it: the mean over folds of each fold's best epoch."""
        return self.f1.max(axis=2).mean(axis=1)

    @property
    def is_grid(self) -> bool:
        """Every combination of the dims' choices is recorded: every proposal maps to its own configuration."""
        if not all(isinstance(d, Choice) for d in self.dims.values()):
            return False
        recorded = {tuple(c[name] for name in self.dims) for c in self.configs}
        return recorded == set(itertools.product(*(d.values for d in self.dims.values())))

    def nearest(self, params: Mapping[str, Any]) -> int:
        """The recorded configuration nearest to ``params`` in normalised parameter space.

        A range counts as its position from low to high (on a log scale when the range is log),
        a choice as 0 when equal and 1 when not; the first recorded configuration wins a tie.
        On a grid every proposal is a recorded configuration: the distance is 0.
        """
        distance = np.zeros(len(self.configs))
        for name, dim in self.dims.items():
            recorded = [c[name] for c in self.configs]
            if isinstance(dim, Range):
                scale = np.log if dim.log else (lambda v: np.asarray(v, dtype=float))
                width = float(scale(dim.high) - scale(dim.low)) or 1.0
                distance += ((scale(np.asarray(recorded, dtype=float)) - scale(params[name])) / width) ** 2
            else:
                distance += np.asarray([value != params[name] for value in recorded], dtype=float)
        return int(np.argmin(distance))

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "about": dict(self.about),
                "dims": {name: _dim_to_json(dim) for name, dim in self.dims.items()},
                "configs": [dict(c) for c in self.configs],
                "f1": np.round(self.f1, 5).tolist(), "seconds": np.round(self.seconds, 3).tolist()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "<curves>") -> Curves:
        """The table of :meth:`to_dict`'s form.

        Raises:
            MaskoptError: ``data`` is not such a table.
        """
        try:
            if data["format"] != FORMAT:
                raise ValueError(f"format {data['format']!r} is not {FORMAT!r}")
            dims = {str(name): _dim_from_json(value) for name, value in data["dims"].items()}
            configs = tuple(dict(c) for c in data["configs"])
            if any(set(c) != set(dims) for c in configs):
                raise ValueError("a configuration does not name exactly the table's parameters")
            return cls(dims=dims, configs=configs, f1=np.asarray(data["f1"], dtype=float),
                       seconds=np.asarray(data["seconds"], dtype=float), about=dict(data.get("about") or {}))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise MaskoptError(f"{source} is not a curves table ({type(e).__name__}: {str(e)[:200]})") from e

    def write(self, path: str | Path, *, about: Mapping[str, Any] | None = None) -> Path:
        """Write the table as gzipped JSON (``about`` replaces the table's own)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = self.to_dict()
        if about is not None:
            data["about"] = dict(about)
        with gzip.open(path, "wt", encoding="utf-8") as f:
            json.dump(data, f, separators=(",", ":"), default=str)
        return path

    @classmethod
    def read(cls, path: str | Path) -> Curves:
        """The table written by :meth:`write`.

        Raises:
            MaskoptError: The file cannot be read or is not a curves table.
        """
        try:
            with gzip.open(path, "rt", encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError) as e:
            raise MaskoptError(f"cannot read the curves table {path}: {e}") from e
        return cls.from_dict(data, source=str(path))


def _dim_to_json(dim: Dimension):
    if isinstance(dim, Choice):
        return {"choices": list(dim.values)}
    return {"low": dim.low, "high": dim.high, "log": dim.log, "step": dim.step}


def _dim_from_json(value) -> Dimension:
    if "choices" in value:
        return Choice(tuple(value["choices"]))
    return Range(float(value["low"]), float(value["high"]), bool(value["log"]), value["step"])


# --- the simulator ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplayedTrial:
    """One trial of a replay: which row it trained, when, and how it ended.

    ``end`` is when it finished or was pruned (None: still running when the budget ran out);
    ``value`` its score when it ran every fold, else None.
    """

    row: int
    start: float
    end: float | None
    epochs: int
    pruned: bool
    value: float | None
    paused: bool = False  # pruned by asha with its checkpoint kept: a promotion may continue it
    continues: int | None = None  # the paused trial (its index in the replay's trials) this one continues


@dataclass(frozen=True)
class ReplayRun:
    """One replayed search.

    Attributes:
        sampler, pruner: What searched.
        workers: Parallel workers.
        seed: The sampler's seed.
        budget_seconds: Simulated seconds it was given (None: no limit but the trial count).
        seconds: Simulated seconds it ran: the budget, or when its last trial ended if earlier.
        trials: Every trial started, in the order they started.
        curve: ``(simulated seconds, best F1 so far)`` at each improvement, counting trials that
            ran every fold and ended within the budget.
        best: The final best F1 (None: no trial ran every fold in time).
        best_config: The row of the table that scored it.
    """

    sampler: Component
    pruner: Component
    workers: int
    seed: int
    budget_seconds: float | None
    seconds: float
    trials: tuple[ReplayedTrial, ...]
    curve: tuple[tuple[float, float], ...]
    best: float | None
    best_config: int | None

    @property
    def finished(self) -> int:
        """Trials that ran every fold within the budget."""
        return sum(t.value is not None for t in self.trials)

    @property
    def pruned(self) -> int:
        return sum(t.pruned for t in self.trials)

    @property
    def epochs(self) -> int:
        """Epochs trained within the budget."""
        return sum(t.epochs for t in self.trials)

    def time_to(self, target: float) -> float | None:
        """Simulated seconds until the best so far first reached ``target``; None if it never did."""
        return next((t for t, best in self.curve if best >= target - 1e-12), None)


@dataclass(frozen=True)
class _Plan:
    """A configuration's trial as a worker runs it: each report's step, value and time after the start."""

    reports: tuple[tuple[int, float], ...]
    times: tuple[float, ...]
    fold_best: tuple[float, ...]
    epochs_per_report: int

    @classmethod
    def of(cls, f1: np.ndarray, seconds: np.ndarray, steps: PruningSteps) -> _Plan:
        fold_best = tuple(float(v) for v in f1.max(axis=1))
        reports = tuple(steps.curve(fold_best, f1.tolist()))
        per_report = seconds.sum(axis=1) if steps.per_fold else seconds.ravel()
        return cls(reports, tuple(np.cumsum(per_report).tolist()), fold_best, steps.epochs if steps.per_fold else 1)


def replay(curves: Curves, *, sampler: Component, pruner: Component, workers: int = 1, seed: int = 0,
           budget_seconds: float | None = None, trials: int | None = None, order: Sequence[int] = (),
           folds: int | None = None, epochs: int | None = None) -> ReplayRun:
    """Replay a search of ``sampler`` and ``pruner`` with ``workers`` parallel workers on ``curves``.

    Args:
        curves: The recorded table.
        sampler: A sampler of the catalogue (``SAMPLERS``), seeded with ``seed``.
        pruner: A pruner of the catalogue (``PRUNERS``), with maskopt's defaults for the steps.
        workers: Parallel workers, each running one trial at a time.
        seed: Seeds the sampler.
        budget_seconds: No trial starts after this many simulated seconds, and only trials that end
            within it count.
        trials: No more than this many trials start (a study's total). With neither limit, a study
            of as many trials as the table has configurations.
        order: Rows of the table that the first trials train, in this order (enqueued), before the
            sampler proposes.
        folds, epochs: Replay only the first folds and epochs of each recorded trial (default: all).
            A shorter study's folds and learning-rate schedule would differ: an approximation.

    Raises:
        MaskoptError: An unknown sampler or pruner, or a limit out of range.
    """
    folds = curves.folds if folds is None else folds
    epochs = curves.epochs if epochs is None else epochs
    _check_names(sampler, pruner)
    if not (1 <= folds <= curves.folds and 1 <= epochs <= curves.epochs):
        raise MaskoptError(f"`folds` and `epochs` must be from 1 to the table's {curves.folds} and {curves.epochs}; "
                           f"got {folds} and {epochs}")
    if workers < 1 or (trials is not None and trials < 1) or (budget_seconds is not None and not budget_seconds > 0):
        raise MaskoptError(f"`workers` and `trials` must be at least 1 and `budget_seconds` above 0; got {workers}, "
                           f"{trials} and {budget_seconds}")
    if any(not 0 <= row < len(curves.configs) for row in order):
        raise MaskoptError(f"`order` names rows outside the table's {len(curves.configs)} configurations")
    if budget_seconds is None and trials is None:
        trials = len(curves.configs)
    budget = math.inf if budget_seconds is None else float(budget_seconds)
    settings = StudySettings(folds=folds, epochs=epochs, seed=seed, sampler=sampler, pruner=pruner)
    steps = PruningSteps.of(settings)
    plans: dict[int, _Plan] = {}

    def plan(row: int) -> _Plan:
        if row not in plans:
            plans[row] = _Plan.of(curves.f1[row, :folds, :epochs], curves.seconds[row, :folds, :epochs], steps)
        return plans[row]

    with _quietly():  # no Optuna log line per replayed trial, no warnings
        # A fixed study name: Hyperband assigns trials to brackets by a hash of it.
        study = optuna.create_study(study_name="replay", direction="maximize", pruner=build_pruner(settings),
                                    sampler=build_sampler(sampler, seed=seed))
        for row in order:
            study.enqueue_trial(dict(curves.configs[row]))
        events: list[tuple[float, int, int]] = []  # (time, tie-breaker, worker)
        # worker -> (trial, its index in log, next report, when the trial would have started from step 0)
        running: dict[int, tuple[optuna.Trial, int, int, float]] = {}
        log: list[ReplayedTrial] = []
        tie = itertools.count()
        curve: list[tuple[float, float]] = []
        best_config, ended, cut = None, 0.0, False

        asha = study.pruner if isinstance(study.pruner, AshaPruner) and study.pruner.max_paused else None
        paused: dict[int, int] = {}  # paused trial number -> its next report, while it may be promoted

        def start(worker: int, now: float) -> None:
            if now >= budget:
                return
            promoted = None if asha is None else next_promotion(study, asha, resumable=lambda t: t.number in paused)
            if promoted is not None:
                study.enqueue_trial(promoted.params, user_attrs=continuation_attrs(promoted))
            elif trials is not None and sum(t.continues is None for t in log) >= trials and not _waiting(study):
                return
            trial = study.ask()  # the oldest queued trial first: not necessarily the promotion just queued
            continues = TrialRecord.of(study._storage.get_trial(trial._trial_id)).continues
            if continues is not None:
                # As the objective resumes: the inherited reports again, then the epochs left.
                first = paused.pop(continues)
                p = plan(log[continues].row)
                for step, value in p.reports[:first]:
                    trial.report(value, step)
                row, base = log[continues].row, now - p.times[first - 1]
            else:
                row, first, base = curves.nearest(_suggest(trial, curves.dims)), 0, now
            running[worker] = (trial, len(log), first, base)
            log.append(ReplayedTrial(row, now, None, 0, False, None, continues=continues))
            heapq.heappush(events, (base + plan(row).times[first], next(tie), worker))

        for worker in range(workers):
            start(worker, 0.0)
        while events:
            now, _, worker = heapq.heappop(events)
            if now > budget:
                cut = True
                break
            ended = now
            trial, index, report, base = running[worker]
            entry = log[index]
            p = plan(entry.row)
            step, value = p.reports[report]
            trial.report(value, step)
            entry = dataclasses.replace(entry, epochs=entry.epochs + p.epochs_per_report)
            if report + 1 < len(p.reports) and not trial.should_prune():
                log[index] = entry
                running[worker] = (trial, index, report + 1, base)
                heapq.heappush(events, (base + p.times[report + 1], next(tie), worker))
                continue
            if report + 1 < len(p.reports):  # pruned
                pause = asha is not None and step in asha.rungs
                log[index] = dataclasses.replace(entry, end=now, pruned=True, paused=pause)
                if steps.per_fold:  # as the objective: the mean of the folds so far, COMPLETE
                    study.tell(trial, float(np.mean(p.fold_best[:report + 1])))
                else:
                    if pause:
                        for key, value in pause_attrs(step, asha.rungs.index(step)).items():
                            trial.set_user_attr(key, value)
                        paused[trial.number] = report + 1
                    study.tell(trial, state=TrialState.PRUNED)
                    if pause:  # as a search keeps at most max_paused checkpoints
                        for t in to_evict(study, asha, resumable=lambda t: t.number in paused):
                            del paused[t.number]
            else:
                score = float(np.mean(p.fold_best))
                log[index] = dataclasses.replace(entry, end=now, value=score)
                study.tell(trial, score)
                if not curve or score > curve[-1][1]:
                    curve.append((now, score))
                    best_config = entry.row
            start(worker, now)
    return ReplayRun(sampler=sampler, pruner=pruner, workers=workers, seed=seed, budget_seconds=budget_seconds,
                     seconds=budget if cut else ended, trials=tuple(log), curve=tuple(curve),
                     best=curve[-1][1] if curve else None, best_config=best_config)


def _waiting(study: optuna.Study) -> bool:
    return bool(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


def _suggest(trial: optuna.Trial, dims: Mapping[str, Dimension]) -> dict[str, Any]:
    """The trial's proposal for each dimension, asked as the search asks it (``SearchSpace.suggest``)."""
    values = {}
    for name, dim in dims.items():
        if isinstance(dim, Choice):
            values[name] = trial.suggest_categorical(name, list(dim.values))
        elif PARAMS[name].kind is int:
            values[name] = trial.suggest_int(name, int(dim.low), int(dim.high), step=int(dim.step or 1), log=dim.log)
        else:
            values[name] = trial.suggest_float(name, dim.low, dim.high, step=dim.step, log=dim.log)
    return values


def _check_names(sampler: Component, pruner: Component) -> None:
    if sampler.name not in SAMPLERS:
        raise MaskoptError(f"unknown `sampler` {sampler.name!r}; choose from {', '.join(SAMPLERS)}")
    if pruner.name not in PRUNERS:
        raise MaskoptError(f"unknown `pruner` {pruner.name!r}; choose from {', '.join(PRUNERS)}")


# --- a finished study, replayed -----------------------------------------------------------------


@dataclass(frozen=True)
class StudyTable:
    """A finished study's trials that ran every fold, as a curves table.

    Attributes:
        study: The study's name.
        curves: One row per trial that ran every fold, in trial order. Its epochs' seconds are
            the trial's recorded time shared evenly (a study records each trial's time, not each
            epoch's); a study whose pruner reported once per fold (Wilcoxon) has no epoch curves,
            so its table has one "epoch" per fold holding the fold's score.
        trials: The trial number of each row.
        left_out: What was left out of the table, and why (one line per reason, with the trials).
        sampler, pruner: The study's own.
    """

    study: str
    curves: Curves
    trials: tuple[int, ...]
    left_out: tuple[str, ...]
    sampler: Component
    pruner: Component

    @property
    def per_fold(self) -> bool:
        return self.pruner.name == "wilcoxon"


def study_curves(record: StudyRecord) -> StudyTable:
    """The trials of a finished study that ran every fold, as a :class:`Curves` table.

    Each fold's curve comes from the trial's reports (intermediate values), read back through
    :class:`PruningSteps`: the value at a fold's epoch is the mean of the earlier folds' scores and
    this fold's best so far, so this fold's best so far is recovered exactly, which is all a pruner
    is ever shown.

    Raises:
        NotAMaskoptStudy: The study has no stored space.
        MaskoptError: Fewer than two trials ran every fold.
    """
    space = record.space
    settings = space.study
    steps = PruningSteps.of(settings)
    epochs = 1 if steps.per_fold else settings.epochs
    searched = {name: dim for name, dim in space.dims.items() if not isinstance(dim, Constant)}
    rows: list[tuple[int, dict, np.ndarray, np.ndarray]] = []
    left_out: dict[str, list[int]] = {}
    for trial in record.study.get_trials(deepcopy=False):
        r = TrialRecord.of(trial)
        reason = _left_out(r, settings.folds, searched)
        f1 = None if reason else _histories(trial.intermediate_values, r.fold_f1, steps)
        if reason is None and f1 is None:
            reason = "with epoch reports missing or at odds with their per-fold scores"
        if reason is not None:
            left_out.setdefault(reason, []).append(r.number)
            continue
        per_epoch = r.seconds / (r.epochs_trained_here or settings.folds * settings.epochs)
        seconds = np.full((settings.folds, epochs), per_epoch * settings.epochs / epochs)
        rows.append((r.number, {name: r.params[name] for name in searched}, f1, seconds))
    if len(rows) < 2:
        raise MaskoptError(f"study {record.name!r} has {len(rows)} trial(s) that ran every fold; a replay needs at "
                           f"least 2 (left out: {'; '.join(_lines(left_out)) or 'nothing'})")
    curves = Curves(dims=searched, configs=tuple(row[1] for row in rows), f1=np.stack([row[2] for row in rows]),
                    seconds=np.stack([row[3] for row in rows]), about={"study": record.name})
    return StudyTable(record.name, curves, tuple(row[0] for row in rows), tuple(_lines(left_out)),
                      settings.sampler, settings.pruner)


def _left_out(r: TrialRecord, folds: int, searched: Mapping[str, Dimension]) -> str | None:
    """Why a trial cannot be a row of the table, or None."""
    if r.state == TrialState.PRUNED:
        return "pruned (their curves stop where they were stopped)"
    if r.state == TrialState.FAIL:
        return f"failed ({r.fail_reason[:80]})" if r.fail_reason else "failed (their worker died; they were re-run)"
    if r.state != TrialState.COMPLETE:
        return f"{r.state.name.lower()}, not finished"
    if r.pruned_after_folds is not None:
        return "stopped by the per-fold pruner before their last fold"
    if len(r.fold_f1) != folds or r.seconds is None:
        return "without recorded per-fold scores or time"
    if any(name not in r.params for name in searched):
        return "with parameters that are not the space's"
    return None


def _histories(reported: Mapping[int, float], fold_f1: Sequence[float], steps: PruningSteps) -> np.ndarray | None:
    """Each fold's best F1 so far after each epoch, from the trial's reports; None if they do not add up."""
    if steps.per_fold:
        return np.asarray(fold_f1, dtype=float)[:, None]
    best = np.zeros((steps.folds, steps.epochs))
    for fold in range(steps.folds):
        for epoch in range(steps.epochs):
            value = reported.get(steps.epoch_step(fold, epoch))
            if value is None or not math.isfinite(value):
                return None
            best[fold, epoch] = value * (fold + 1) - sum(fold_f1[:fold])
    if not np.allclose(best[:, -1], fold_f1, atol=1e-6) or np.any(np.diff(best, axis=1) < -1e-6):
        return None
    return np.clip(best, 0.0, 1.0)


def _lines(left_out: Mapping[str, list[int]]) -> list[str]:
    return [f"{len(numbers)} {'trial' if len(numbers) == 1 else 'trials'} {reason}: "
            f"{', '.join(map(str, numbers[:10]))}{', ...' if len(numbers) > 10 else ''}"
            for reason, numbers in left_out.items()]


@dataclass(frozen=True)
class Strategy:
    """One sampler and pruner, replayed over several seeds."""

    sampler: Component
    pruner: Component
    runs: tuple[ReplayRun, ...]

    def found(self, target: float) -> int:
        """Runs whose best reached ``target``."""
        return sum(run.best is not None and run.best >= target - 1e-12 for run in self.runs)

    def median_time_to(self, target: float) -> float | None:
        """Median over the runs of the time to reach ``target`` (None: most runs never reached it)."""
        times = [run.time_to(target) for run in self.runs]
        middle = statistics.median(math.inf if t is None else t for t in times)
        return None if math.isinf(middle) else middle

    def median_best(self) -> float | None:
        bests = [run.best for run in self.runs if run.best is not None]
        return statistics.median(bests) if bests else None


@dataclass(frozen=True)
class StudyReplay:
    """What other samplers and pruners would have done on a finished study (:func:`replay_study`).

    Attributes:
        table: The study's trials that ran every fold.
        workers: Parallel workers of every replay.
        in_order: The table's trials in their recorded order, without pruning, with the study's
            pruner and with the other pruner (each once; fewer when they are the same).
        budget_seconds: Each search's simulated budget: as long as the table's trials take in their
            recorded order without pruning.
        searches: The study's sampler and pruner, the other ones, and random search without
            pruning, each over the same seeds (each once; fewer when they are the same).
    """

    table: StudyTable
    workers: int
    in_order: tuple[ReplayRun, ...]
    budget_seconds: float
    searches: tuple[Strategy, ...]

    @property
    def best(self) -> float:
        return float(self.table.curves.values.max())

    @property
    def best_trial(self) -> int:
        return self.table.trials[int(np.argmax(self.table.curves.values))]


def replay_study(record: StudyRecord, *, sampler: Component | None = None, pruner: Component | None = None,
                 workers: int = 1, seeds: int = 20) -> StudyReplay:
    """Replay a finished study with another sampler or pruner (default: the study's own).

    Raises:
        NotAMaskoptStudy: The study has no stored space.
        MaskoptError: Fewer than two trials ran every fold, an unknown sampler or pruner, or
            ``workers`` or ``seeds`` below 1.
    """
    if seeds < 1:
        raise MaskoptError(f"`seeds` must be at least 1, got {seeds}")
    table = study_curves(record)
    curves = table.curves
    sampler = table.sampler if sampler is None else sampler
    pruner = table.pruner if pruner is None else pruner
    rows = range(len(curves.configs))
    in_order = tuple(replay(curves, sampler=Component("random"), pruner=p, workers=workers, order=rows,
                            trials=len(rows)) for p in dict.fromkeys([Component("none"), table.pruner, pruner]))
    budget = in_order[0].seconds
    pairs = dict.fromkeys([(table.sampler, table.pruner), (sampler, pruner), (Component("random"), Component("none"))])
    searches = tuple(Strategy(s, p, tuple(replay(curves, sampler=s, pruner=p, workers=workers, seed=seed,
                                                 budget_seconds=budget) for seed in range(seeds)))
                     for s, p in pairs)
    return StudyReplay(table, workers, in_order, budget, searches)
