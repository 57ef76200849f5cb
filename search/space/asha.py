"""Asynchronous successive halving with pausing: the ``asha`` pruner of a space.

Optuna's successive-halving pruner stops for good a trial that does not rank in the top 1/eta at
a rung when it gets there; Optuna cannot resume a stopped trial. maskopt checkpoints every trial
after every epoch, so a trial stopped at a rung can be *paused* instead: its checkpoint is kept,
and when enough later trials reach that rung below it (it then ranks in the top 1/eta), it is
*promoted*: a new trial with the same configuration continues from the checkpoint (Li et al.,
"A System for Massively Parallel Hyperparameter Tuning", MLSys 2020). This module holds the
ranking both decisions share; ``search/study/scheduler.py`` keeps the checkpoints and enqueues
the promotions.

Rungs are steps of the pruning step scheme (``PruningSteps``): rung k ends after
``min_resource * reduction_factor**k`` steps (epochs, counted over folds), for every k whose
rung ends before the trial's last step. At a rung, configurations are ranked by the value they
reported there; a configuration is ranked once however many trials ran it (a paused trial and
its continuation report the same values, and so do two trials of one configuration, which train
with the same seeds). The top ``max(1, n // reduction_factor)`` of the ``n`` ranked go on: the
best so far always does (Optuna's rule too), so the first trials run to the end and a study
never finishes without a complete trial.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping

import optuna
from optuna.trial import FrozenTrial, TrialState


def rung_steps(*, min_resource: int, reduction_factor: int, last_step: int) -> tuple[int, ...]:
    """The steps at which rungs end: ``min_resource * reduction_factor**k - 1`` below ``last_step``."""
    steps, resource = [], min_resource
    while resource - 1 < last_step:
        steps.append(resource - 1)
        resource *= reduction_factor
    return tuple(steps)


def config_key(params: Mapping) -> Hashable:
    """A configuration's identity: its parameters and values."""
    return tuple(sorted((name, repr(value)) for name, value in params.items()))


def rung_values(trials: Iterable[FrozenTrial], step: int) -> dict[Hashable, float]:
    """Each configuration's value at rung ``step``, from any trial of it that reported that step.

    Trials that failed are left out: their reports may stop short, and a retry reports again.
    """
    values = {}
    for trial in trials:
        if trial.state != TrialState.FAIL and step in trial.intermediate_values:
            values.setdefault(config_key(trial.params), trial.intermediate_values[step])
    return values


def ranks_on(value: float, values: Mapping[Hashable, float], reduction_factor: int) -> bool:
    """True when ``value`` ranks in the top ``max(1, n // reduction_factor)`` of the rung's ``values``
    (``value``'s own configuration among them); ties go on."""
    keep = max(1, len(values) // reduction_factor)
    return value >= sorted(values.values(), reverse=True)[keep - 1]


class AshaPruner(optuna.pruners.BasePruner):
    """Stop a trial at a rung unless it ranks in the top 1/``reduction_factor`` there (maximising).

    A search pauses the trials it stops (``search/study/scheduler.py``) and promotes them later.

    Args:
        min_resource: Steps (epochs over folds) of the first rung.
        reduction_factor: eta: 1/eta of a rung's configurations go on to the next.
        max_resource: The trial's full budget in steps (maskopt sets it: folds x epochs).
        max_paused: Paused trials whose checkpoints are kept for promotion; beyond it, the
            checkpoints of those least likely to be promoted are deleted (0: stop without pausing).
    """

    def __init__(self, min_resource: int = 1, reduction_factor: int = 3, max_resource: int = 1,
                 max_paused: int = 16) -> None:
        self.min_resource = min_resource
        self.reduction_factor = reduction_factor
        self.max_resource = max_resource
        self.max_paused = max_paused
        self.rungs = rung_steps(min_resource=min_resource, reduction_factor=reduction_factor,
                                last_step=max_resource - 1)

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step not in self.rungs:
            return False
        values = rung_values(study.get_trials(deepcopy=False), step)
        values[config_key(trial.params)] = trial.intermediate_values[step]
        return not ranks_on(trial.intermediate_values[step], values, self.reduction_factor)
