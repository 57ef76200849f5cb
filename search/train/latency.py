"""What a trained model costs to run: CPU milliseconds per image, measured as maskopt predicts.

A search ranks trials by macro F1 alone; a deployment also asks how fast a model runs. The figure
is cheap enough to take after every complete trial (0.7-0.9 s for EfficientNet-Lite0 at 80 px,
batches 1 and 32, on one thread of a busy 2-core machine) and comparable between the trials of a
study, because the conditions are fixed: the CPU, ``threads`` torch threads (1 by default),
channels-last tensors under ``torch.inference_mode()`` as ``predict_rows`` runs them, random inputs
of the trial's image size (speed does not depend on pixel values), one warm-up call per batch size
(oneDNN picks and caches its kernels for each shape on its first call), then the median of
``repeats`` timed calls. It times the model's forward pass alone: decoding and normalising an image
cost the same for every backbone.

The model is copied, so the caller's model keeps its device, memory format and train/eval mode,
and torch's thread count is restored after.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from maskopt.errors import MaskoptError
from maskopt.search.train.models import count_parameters
from maskopt.search.train.resources import torch_session


@dataclass(frozen=True)
class Latency:
    """CPU inference time of one model.

    Attributes:
        ms_per_image: Batch size -> milliseconds per image (the median call's time over the batch size).
        image_size: The side of the square input.
        threads: torch threads it ran on.
        repeats: Timed calls per batch size (after one warm-up call).
        params: The model's parameter count.
        torch: torch's version.
    """

    ms_per_image: dict[int, float]
    image_size: int
    threads: int
    repeats: int
    params: int
    torch: str

    def to_dict(self) -> dict[str, Any]:
        """A JSON object (batch sizes as string keys), for a trial attribute or a config."""
        return {"ms_per_image": {str(b): ms for b, ms in self.ms_per_image.items()}, "image_size": self.image_size,
                "threads": self.threads, "repeats": self.repeats, "params": self.params, "torch": self.torch}


def measure_latency(model: torch.nn.Module, *, image_size: int, batch_sizes: Sequence[int] = (1, 32),
                    repeats: int = 3, threads: int = 1) -> Latency:
    """Milliseconds per image of ``model``'s forward pass on the CPU, for each batch size.

    Args:
        model: A trained model (any device; it is copied to the CPU, the original is not touched).
        image_size: The side of the square images it takes.
        batch_sizes: Batch sizes to time: 1 is a single request, 32 a batch job.
        repeats: Timed calls per batch size; the median counts.
        threads: torch threads for the measurement (torch's own setting is restored after).

    Raises:
        MaskoptError: A size, count or thread number below 1.

    Example:
        >>> measure_latency(model, image_size=80).ms_per_image
        {1: 4.1, 32: 1.6}
    """
    if image_size < 1 or repeats < 1 or threads < 1 or not batch_sizes or min(batch_sizes) < 1:
        raise MaskoptError(f"latency needs image_size, repeats, threads and batch sizes of at least 1; got "
                           f"image_size={image_size}, repeats={repeats}, threads={threads}, "
                           f"batch_sizes={list(batch_sizes)}")
    model = copy.deepcopy(model).cpu().eval().to(memory_format=torch.channels_last)
    generator = torch.Generator().manual_seed(0)
    ms_per_image = {}
    with torch_session("cpu", threads), torch.inference_mode():
        for batch in batch_sizes:
            x = torch.randn(batch, 3, image_size, image_size, generator=generator)
            x = x.contiguous(memory_format=torch.channels_last)
            model(x)
            seconds = []
            for _ in range(repeats):
                started = time.perf_counter()
                model(x)
                seconds.append(time.perf_counter() - started)
            ms_per_image[batch] = 1000 * statistics.median(seconds) / batch
    return Latency(ms_per_image=ms_per_image, image_size=image_size, threads=threads, repeats=repeats,
                   params=count_parameters(model)[0], torch=torch.__version__)
