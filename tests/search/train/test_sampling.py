"""The training samplers a space names (``params.sampler``): what each draws in an epoch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maskopt.search.train.sampling import CLASS_SAMPLERS

# A long tail as in the competition: 600 images of one class, 150 of another, 24 of the rarest.
LABELS = np.repeat([0, 1, 2], [600, 150, 24])


def draws_per_class(name: str, epochs: int = 50) -> np.ndarray:
    generator = torch.Generator().manual_seed(0)
    order = torch.cat([CLASS_SAMPLERS[name](LABELS, generator) for _ in range(epochs)]).numpy()
    return np.bincount(LABELS[order], minlength=3) / epochs


@pytest.mark.parametrize("name", sorted(CLASS_SAMPLERS))
def test_an_epoch_draws_as_many_images_as_there_are_reproducibly(name):
    first = CLASS_SAMPLERS[name](LABELS, torch.Generator().manual_seed(7))
    again = CLASS_SAMPLERS[name](LABELS, torch.Generator().manual_seed(7))
    assert len(first) == len(LABELS) and 0 <= int(first.min()) and int(first.max()) < len(LABELS)
    assert torch.equal(first, again)


def test_uniform_sees_every_image_once():
    order = CLASS_SAMPLERS["uniform"](LABELS, torch.Generator().manual_seed(0))
    assert sorted(order.tolist()) == list(range(len(LABELS)))


def test_balanced_draws_every_class_equally_often():
    per_class = draws_per_class("balanced")
    np.testing.assert_allclose(per_class, len(LABELS) / 3, rtol=0.05)


def test_sqrt_draws_classes_by_the_square_root_of_their_size():
    per_class = draws_per_class("sqrt")
    expected = np.sqrt([600, 150, 24])
    np.testing.assert_allclose(per_class / per_class.sum(), expected / expected.sum(), rtol=0.05)
