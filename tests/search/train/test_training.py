"""The training loop's batch path: reused CPU buffers give the same batches and the same training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maskopt.search.space import parse_space
from maskopt.search.train import loop as training
from maskopt.search.train.augment import BatchAugment
from maskopt.search.train.loop import BatchBuffers, TrainingData, fast_path, prepare_batch, train_fold

CPU = torch.device("cpu")
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randint(0, 256, (40, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("strength", [0.0, 0.5])
def test_batches_from_buffers_equal_fresh_batches(images, strength):
    augment = BatchAugment(strength, image_size=16)
    buffers = BatchBuffers()
    for rows in (torch.tensor([3, 1, 4, 1, 5, 9, 2, 6]), torch.tensor([7, 0, 39])):
        fresh = prepare_batch(images, rows, CPU, MEAN, STD, augment=augment, generator=torch.Generator().manual_seed(1))
        reused = prepare_batch(images, rows, CPU, MEAN, STD, augment=augment, generator=torch.Generator().manual_seed(1),
                               buffers=buffers)
        assert torch.equal(fresh, reused)


def test_buffers_are_reused_across_batches_and_grow_when_needed(images):
    buffers = BatchBuffers()
    first = prepare_batch(images, torch.arange(8), CPU, MEAN, STD, buffers=buffers)
    pointer = first.data_ptr()
    smaller = prepare_batch(images, torch.arange(3), CPU, MEAN, STD, buffers=buffers)
    assert smaller.data_ptr() == pointer  # the same memory, not a new allocation
    assert smaller.shape == (3, 3, 16, 16)
    larger = prepare_batch(images, torch.arange(12), CPU, MEAN, STD, buffers=buffers)
    assert larger.shape == (12, 3, 16, 16)
    expected = (images[:12].float() / 255 - MEAN) / STD
    assert torch.allclose(larger, expected, atol=1e-6)


def test_training_with_reused_buffers_equals_training_with_fresh_batches(monkeypatch, space_dict):
    """Reuse is only safe if nothing reads a batch after the next one is gathered: the trained
    weights and scores must not change when every batch gets fresh memory instead."""
    space = parse_space(space_dict(study={"epochs": 2}, params={"batch_size": 8, "aug_strength": 0.3}))
    params, settings = space.params_from({}), space.study
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (36, 3, 32, 32), dtype=np.uint8))
    labels = rng.integers(0, 18, 36)
    data = TrainingData(images, np.arange(26), labels[:26], np.arange(26, 36), labels[26:])

    def train():
        result, model = train_fold(params, data, config=settings.train_config(), num_classes=18, device=CPU, seed=3)
        return result.f1_history, [p.detach().clone() for p in model.parameters()]

    reused_history, reused_weights = train()
    monkeypatch.setattr(training.BatchBuffers, "views", lambda self, images, n: (
        torch.empty((n, *images.shape[1:]), dtype=torch.uint8), torch.empty((n, *images.shape[1:]))))
    fresh_history, fresh_weights = train()
    assert reused_history == fresh_history
    assert all(torch.equal(a, b) for a, b in zip(reused_weights, fresh_weights))


def test_fast_path_records_what_a_trial_really_runs_with(space_dict):
    settings = parse_space(space_dict(study={"amp": False, "channels_last": True, "compile": True})).study
    on_cpu = {"amp": "off", "channels_last": True, "compile": False, "cudnn_benchmark": False}
    assert fast_path(CPU, settings) == on_cpu  # AMP and compile are CUDA-only; channels-last helps the CPU too
    no_channels_last = parse_space(space_dict(study={"channels_last": False})).study
    assert fast_path(CPU, no_channels_last)["channels_last"] is False
    on_gpu = fast_path(torch.device("cuda"), settings)  # no GPU needed: amp off asks CUDA nothing
    assert on_gpu["amp"] == "off" and on_gpu["channels_last"] is True and on_gpu["compile"] is True
