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
    counts = np.bincount(labels)
    weights = torch.as_tensor(1.0 / counts[labels], dtype=torch.float64)
    return torch.multinomial(weights, len(labels), replacement=True, generator=generator)


def sqrt_balanced_order(labels: np.ndarray, generator: torch.Generator) -> torch.Tensor:
    """As many draws as images, with replacement, weighted by one over the square root of the
    class frequency: rare classes are seen more often than under ``uniform_order``, but a
    class 25x rarer is drawn 5x less often instead of as often. ``balanced_order`` repeats a
    12-image class about as often as a 600-image one and, in a short training, leaves most
    images of the common classes unseen."""
    counts = np.bincount(labels)
    weights = torch.as_tensor(1.0 / np.sqrt(counts[labels]), dtype=torch.float64)
    return torch.multinomial(weights, len(labels), replacement=True, generator=generator)


CLASS_SAMPLERS: dict[str, Callable[[np.ndarray, torch.Generator], torch.Tensor]] = {
    "uniform": uniform_order,
    "balanced": balanced_order,
    "sqrt": sqrt_balanced_order,
}
