"""The sampler and pruner catalogue, and the step scheme that lets pruning act inside and across folds.

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

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import optuna

if TYPE_CHECKING:  # only for annotations: the schema module imports these registries
    from maskopt.search.space.schema import Component, StudySettings

# The names a space may give (study.sampler, study.pruner); the space refuses any other.
SAMPLERS: dict[str, type] = {
    "tpe": optuna.samplers.TPESampler,
    "random": optuna.samplers.RandomSampler,
    "gp": optuna.samplers.GPSampler,
    "qmc": optuna.samplers.QMCSampler,
    "cmaes": optuna.samplers.CmaEsSampler,
}
PRUNERS: dict[str, type] = {
    "median": optuna.pruners.MedianPruner,
    "percentile": optuna.pruners.PercentilePruner,
    "hyperband": optuna.pruners.HyperbandPruner,
    "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
    "wilcoxon": optuna.pruners.WilcoxonPruner,
    "none": optuna.pruners.NopPruner,
}


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
        "wilcoxon": {"p_threshold": 0.1},
        "none": {},
    }[settings.pruner.name]
    with warnings.catch_warnings():
        # Wilcoxon is marked experimental; it is chosen knowingly, and a warning per run is noise.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return PRUNERS[settings.pruner.name](**{**defaults, **settings.pruner.kwargs()})


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
