"""Trials as people read them: one line per finished trial, parameters wrapped to 80 columns."""

from __future__ import annotations

import textwrap

import numpy as np

from maskopt.search.study.record import TrialRecord


def describe_trial(trial: TrialRecord) -> str:
    """A few lines per finished trial: number, state, F1, time, reason; parameters wrapped below."""
    state = trial.state.name
    if trial.value is not None:
        score = f"F1 {trial.value:.4f}"
    elif trial.fold_f1:
        score = f"F1 {np.mean(trial.fold_f1):.4f}*"  # mean of the folds it finished
    else:
        score = "F1   -   "
    reason = trial.fail_reason or trial.prune_reason or ""
    head = f"trial {trial.number:>3} {state:<8} {score}  {trial.seconds or 0:6.1f}s"
    if reason and state != "COMPLETE":
        head += f"  {reason}"
    if trial.continues is not None:
        head += f"  (continues paused trial {trial.continues})"
    if trial.warm_start is not None:
        head += f"  (warm start: trial {trial.warm_start.trial} of {trial.warm_start.study!r})"
    return head + "\n" + format_params(trial.params)


def format_params(params: dict, *, width: int = 80, indent: str = "    ") -> str:
    """``name=value`` pairs wrapped to ``width`` columns."""
    text = " ".join(f"{k}={format_value(v)}" for k, v in params.items())
    return textwrap.fill(text, width=width, initial_indent=indent, subsequent_indent=indent)


def format_value(value) -> str:
    """A parameter value as people read it: floats to 3 significant digits."""
    return f"{value:.3g}" if isinstance(value, float) else str(value)
