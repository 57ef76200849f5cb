"""The search space: a YAML file read into typed parameters and study settings (``schema.py``)."""

from maskopt.search.space.schema import (
    PARAMS,
    Choice,
    Component,
    Constant,
    Range,
    SearchSpace,
    StudySettings,
    TrialParams,
    discrete_values,
    load_space,
    parse_space,
)

__all__ = ["PARAMS", "Choice", "Component", "Constant", "Range", "SearchSpace", "StudySettings", "TrialParams",
           "discrete_values", "load_space", "parse_space"]
