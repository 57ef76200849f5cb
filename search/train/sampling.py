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


CLASS_SAMPLERS: dict[str, Callable[[np.ndarray, torch.Generator], torch.Tensor]] = {
    "uniform": uniform_order,
    "balanced": balanced_order,
}
