"""The search space: a YAML file read into typed parameters and study settings (``schema.py``), and the
sampler and pruner catalogue with the pruning step scheme (``components.py``)."""

from maskopt.search.space.components import PRUNERS, SAMPLERS, PruningSteps, build_pruner, build_sampler
from maskopt.search.space.schema import (
    PARAMS,
    Choice,
    Component,
    Constant,
    Range,
    SearchSpace,
    StudySettings,
    TrialParams,
    check_seed,
    check_study_name,
    discrete_values,
    load_space,
    parse_space,
)

__all__ = ["PARAMS", "PRUNERS", "SAMPLERS", "Choice", "Component", "Constant", "PruningSteps", "Range", "SearchSpace",
           "StudySettings", "TrialParams", "build_pruner", "build_sampler", "check_seed", "check_study_name",
           "discrete_values", "load_space", "parse_space"]
