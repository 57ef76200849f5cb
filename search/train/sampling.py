"""The order of training images in an epoch, by the names a space gives (``params.sampler``)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch


def uniform_order(labels: np.ndarray, generator: torch.Generator) -> torch.Tensor:
    """Every training image once, in random order."""
    return torch.randperm(len(labels), generator=generator)


def balanced_order(labels: np.ndarray, generator: torch.Generator) -> torch.Tensor:
    """As many draws as images, with replacement, weighted inversely to class frequency, so
    that every class is seen about equally often."""
    return _draws(1.0 / _class_sizes(labels), generator)


def sqrt_balanced_order(labels: np.ndarray, generator: torch.Generator) -> torch.Tensor:
    """As many draws as images, with replacement, weighted by one over the square root of the
    class frequency: rare classes are seen more often than under ``uniform_order``, but a
    class 25x rarer is drawn 5x less often instead of as often. ``balanced_order`` repeats a
    12-image class about as often as a 600-image one and, in a short training, leaves most
    images of the common classes unseen."""
    return _draws(1.0 / np.sqrt(_class_sizes(labels)), generator)


def _class_sizes(labels: np.ndarray) -> np.ndarray:
    """The size of each image's class."""
    return np.bincount(labels)[labels]


def _draws(weights: np.ndarray, generator: torch.Generator) -> torch.Tensor:
    """As many draws as there are images, with replacement, by the images' ``weights``."""
    return torch.multinomial(torch.as_tensor(weights, dtype=torch.float64), len(weights), replacement=True,
                             generator=generator)


CLASS_SAMPLERS: dict[str, Callable[[np.ndarray, torch.Generator], torch.Tensor]] = {
    "uniform": uniform_order,
    "balanced": balanced_order,
    "sqrt": sqrt_balanced_order,
}
