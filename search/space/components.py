"""The sampler and pruner catalogue, the rehearsals that try a space's sampler and pruner before a
study uses them, and the step scheme that lets pruning act inside and across folds.

Step scheme (``epoch`` reporting, used by every pruner but Wilcoxon): a trial with F folds of E
epochs reports after every epoch, at step ``fold * E + epoch``, the mean over the folds started so
far of each fold's best macro F1 up to that point. All trials pass through the same steps in the
same order, so Median, Percentile, Successive Halving and Hyperband compare like with like: inside
the first fold they compare epoch curves, and at step ``E`` (first epoch of the second fold) a
trial that is clearly behind after its first fold stops before training the others.

Wilcoxon (``fold`` reporting) is built for k-fold evaluations: it reports each finished fold's
score at step ``fold`` and compares a trial's folds with the best trial's folds pairwise. Optuna
recommends that a trial it stops returns the mean so far rather than raising, so that the sampler
still learns from it; such trials are COMPLETE with ``pruned_after_folds`` set, and never exported.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import optuna

from maskopt.search.space.asha import AshaPruner

if TYPE_CHECKING:  # only for annotations: the schema module imports these registries
    from maskopt.search.space.schema import Component, StudySettings

# The names a space may give (study.sampler, study.pruner); the space refuses any other.
SAMPLERS: dict[str, type] = {
    "tpe": optuna.samplers.TPESampler,
    "random": optuna.samplers.RandomSampler,
    "gp": optuna.samplers.GPSampler,
    "qmc": optuna.samplers.QMCSampler,
    "cmaes": optuna.samplers.CmaEsSampler,
    "nsga2": optuna.samplers.NSGAIISampler,
}
# Samplers that handle several objectives (a space's ``objectives: [macro_f1, latency]``).
MULTI_OBJECTIVE_SAMPLERS = ("tpe", "random", "gp", "qmc", "nsga2")
PRUNERS: dict[str, type] = {
    "median": optuna.pruners.MedianPruner,
    "percentile": optuna.pruners.PercentilePruner,
    "hyperband": optuna.pruners.HyperbandPruner,
    "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
    "asha": AshaPruner,  # successive halving that pauses and promotes (asha.py, study/scheduler.py)
    "wilcoxon": optuna.pruners.WilcoxonPruner,
    "none": optuna.pruners.NopPruner,
}

# The meaningful whole numbers of sampler and pruner options, by name (a name means the same in
# every sampler and pruner): (least, greatest or None). Optuna takes some of these out of range
# without a word, a negative n_startup_trials say, and fails or stalls in every trial on others
# (hyperband's reduction_factor 1, or a million n_ei_candidates drawn for every parameter).
OPTION_RANGES: dict[str, tuple[int, int | None]] = {
    "n_startup_trials": (0, None),
    "n_startup_steps": (0, None),
    "n_warmup_steps": (0, None),
    "interval_steps": (1, None),
    "n_min_trials": (1, None),
    "n_ei_candidates": (1, 10_000),
    "min_resource": (1, None),
    "max_resource": (1, None),
    "reduction_factor": (2, None),
    "min_early_stopping_rate": (0, None),
    "bootstrap_count": (0, None),
    "max_paused": (0, None),
}
REHEARSAL_TRIALS = 2  # trials a rehearsal runs after the sampler's start-up trial
REHEARSAL_STEPS = 12  # at most this many reports per rehearsal trial


def build_sampler(component: Component, *, seed: int) -> optuna.samplers.BaseSampler:
    """The sampler, seeded from the study so the same space and seed give the same trials.

    Optuna 5's TPE defaults (multivariate, constant liar) already suit parallel workers:
    a running trial counts as a bad result, so workers do not all sample the same point.
    """
    with warnings.catch_warnings():
        # Some samplers (gp, qmc) are marked experimental; chosen knowingly, a warning per run is noise.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return SAMPLERS[component.name](seed=seed, **component.kwargs())


def build_pruner(settings: StudySettings) -> optuna.pruners.BasePruner:
    """The pruner with defaults fitted to the step scheme above; the space's options win.

    Pruner state is not stored, so every worker builds the same pruner from the same space.
    """
    total_steps = settings.folds * settings.epochs
    defaults = {
        "median": {"n_startup_trials": 3, "n_warmup_steps": 1},
        "percentile": {"percentile": 25.0, "n_startup_trials": 3, "n_warmup_steps": 1},
        "hyperband": {"min_resource": 1, "max_resource": total_steps, "reduction_factor": 3},
        "successive_halving": {"min_resource": 1, "reduction_factor": 3},
        "asha": {"min_resource": 1, "reduction_factor": 3, "max_resource": total_steps},
        "wilcoxon": {"p_threshold": 0.1},
        "none": {},
    }[settings.pruner.name]
    with warnings.catch_warnings():
        # Wilcoxon is marked experimental; it is chosen knowingly, and a warning per run is noise.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return PRUNERS[settings.pruner.name](**{**defaults, **settings.pruner.kwargs()})


def rehearse_sampler(component: Component, *, seed: int, suggest: Callable[[optuna.Trial], object]) -> None:
    """Build the sampler and let it sample a few trials of ``suggest`` on a throw-away in-memory study.

    Some options pass the constructor and fail only when the sampler samples, that is in every
    trial of a study. The start-up phase is cut to one trial, so the rehearsal takes
    milliseconds (a second or two for ``gp``, which fits a Gaussian process per trial). A sampler
    without options is Optuna's own default: it needs no rehearsal. Raises whatever the sampler
    raises.
    """
    if not component.options:
        return
    options = component.kwargs()
    if "n_startup_trials" in inspect.signature(SAMPLERS[component.name]).parameters:
        options["n_startup_trials"] = min(options.get("n_startup_trials", 1), 1)
    with _quietly():
        sampler = build_sampler(dataclasses.replace(component, options=tuple(options.items())), seed=seed)
        study = optuna.create_study(direction="maximize", sampler=sampler)
        for number in range(1 + REHEARSAL_TRIALS):
            trial = study.ask()
            suggest(trial)
            study.tell(trial, _rehearsal_value(number, 0))


def rehearse_pruner(settings: StudySettings) -> None:
    """Build the study's pruner and let it judge a few trials' reports on a throw-away in-memory study.

    Hyperband and successive halving check some options only when they first prune.
    Raises whatever the pruner raises.
    """
    steps = PruningSteps.of(settings)
    with _quietly():
        study = optuna.create_study(direction="maximize", pruner=build_pruner(settings),
                                    sampler=optuna.samplers.RandomSampler(seed=0))
        for number in range(1 + REHEARSAL_TRIALS):
            trial = study.ask()
            value = 0.0
            for step in range(min(steps.last + 1, REHEARSAL_STEPS)):
                value = _rehearsal_value(number, step)
                trial.report(value, step)
                if trial.should_prune():
                    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                    break
            else:
                study.tell(trial, value)


def _rehearsal_value(number: int, step: int) -> float:
    """A made-up score in [0, 1): varied, so samplers and pruners have something to compare."""
    return ((number * 7 + step * 3) % 10) / 10


@contextlib.contextmanager
def _quietly() -> Iterator[None]:
    """No Optuna log lines or warnings: a rehearsal's study is nobody's business."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        optuna.logging.set_verbosity(verbosity)


@dataclass(frozen=True)
class PruningSteps:
    """The step scheme above, for one study: which step each report goes to, and its value.

    The objective reports through it, a resumed trial replays its inherited curve through it, and
    the replay simulator reads recorded curves through it, so all three report the same steps.
    """

    folds: int
    epochs: int
    per_fold: bool  # Wilcoxon: one report per finished fold

    @classmethod
    def of(cls, settings: StudySettings) -> PruningSteps:
        return cls(settings.folds, settings.epochs, settings.pruner.name == "wilcoxon")

    @property
    def last(self) -> int:
        """The last step: pruning there would save nothing, only turn a finished trial into a pruned one."""
        return self.folds - 1 if self.per_fold else self.folds * self.epochs - 1

    def epoch_step(self, fold: int, epoch: int) -> int:
        return fold * self.epochs + epoch

    @staticmethod
    def running_mean(finished_f1: Sequence[float], best_in_fold: float) -> float:
        """The value reported after an epoch: the mean of the finished folds' best F1 and this fold's best so far."""
        return float(np.mean([*finished_f1, best_in_fold]))

    def curve(self, finished_f1: Sequence[float], histories: Sequence[Sequence[float]]) -> list[tuple[int, float]]:
        """``(step, value)`` of every report a trial made, given each fold's per-epoch F1 history.

        ``finished_f1`` holds the best F1 of each finished fold; ``histories`` the per-epoch F1
        of every fold started (the finished ones and, last, a fold in progress).
        """
        if self.per_fold:
            return [(fold, float(f1)) for fold, f1 in enumerate(finished_f1)]
        reports = []
        for fold, history in enumerate(histories):
            best = 0.0
            for epoch, f1 in enumerate(history):
                best = max(best, f1)
                reports.append((self.epoch_step(fold, epoch), self.running_mean(finished_f1[:fold], best)))
        return reports
