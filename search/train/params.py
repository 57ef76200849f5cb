"""What training takes: one configuration (``TrialParams``) and the run's settings (``TrainConfig``).

Training owns these types; the search space builds them (``SearchSpace.suggest``,
``StudySettings.train_config``), so training never reads a space.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TrialParams:
    """One configuration to train: every searchable parameter resolved to a value."""

    backbone: str
    lr: float
    weight_decay: float
    batch_size: int
    freeze_depth: int
    sampler: str
    aug_strength: float
    loss: str
    optimizer: str
    image_size: int
    age_old: int
    head: str

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class TrainConfig:
    """What training takes from the study's settings, and nothing more."""

    epochs: int
    warmup_epochs: float = 1.0  # linear learning-rate warm-up, then cosine decay
    pretrained: bool = False
    weights: str | None = None  # local weights file or folder (see models.build_model)
    amp: bool = True  # mixed precision on CUDA
    channels_last: bool = True  # channels-last tensors: faster convolutions on CUDA and the CPU
    compile: bool = False  # torch.compile on CUDA
