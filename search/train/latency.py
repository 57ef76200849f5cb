"""What a trained model costs to run: CPU milliseconds per image, measured as maskopt predicts.

A search ranks trials by macro F1 alone; a deployment also asks how fast a model runs. The figure
is taken before every trial, so it must be cheap, and it is compared across the trials of a study
(and against ``study.max_latency_ms``), so it must be repeatable on a shared, busy machine. The
conditions are fixed: the CPU, ``threads`` torch threads (1 by default), channels-last tensors
under ``torch.inference_mode()`` as ``predict_rows`` runs them, random inputs of the trial's image
size (speed does not depend on pixel values), one untimed warm-up call per batch size (oneDNN picks
and caches its kernels for each shape on its first call). It times the model's forward pass alone:
decoding and normalising an image cost the same for every backbone.

Other processes only ever add time to a call, never remove it, so the noise is one-sided and the
figure is the **least** of several timed calls, not their median:

- On one thread the clock is the calling thread's CPU time (``time.thread_time``): all of the
  forward pass runs on that thread, and the time it spends waiting for a core while other
  processes run is not counted. On a 2-core machine with 4 busy processes that waiting was most of
  a call's wall time: the median of 3 wall-clock calls of the same configuration ranged 2-3x between
  measurements, and 3.3 against 8.8 ms for resnet10t at 48 px inside one benchmark.
- What remains is the slowdown while the thread runs (caches, memory bandwidth and cores shared
  with the other processes), which also only adds: the least of the calls is the figure closest
  to the model's own cost. On that machine at a load of 3-4, the least thread CPU time of 15
  calls of one configuration varied at most 1.33x between measurements (most within 1.1x);
  three more CPU-bound processes raised it 1.1-1.4x.
- With more threads the work is spread over threads that the caller's CPU clock does not see, so
  the clock is wall time (``time.perf_counter``), still the least call: waiting is counted then.

Batch 1 (a single request) is timed ``repeats`` times (15 by default); a larger batch times about
as many images, in at least 3 calls (3 at batch 32). The whole measurement, copy and warm-ups
included, took 0.6-0.8 s for EfficientNet-Lite0 at 80 px at a load of 3 (more wall time under
more load). ``Latency.statistic`` records which figure it is; records written before it existed
hold the median wall time of 3 calls.

The model is copied, so the caller's model keeps its device, memory format and train/eval mode,
and torch's thread count is restored after.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from maskopt.errors import MaskoptError
from maskopt.search.train.models import count_parameters
from maskopt.search.train.resources import torch_session

# Looked up at each call (not bound at import), so that a test can substitute a scripted clock.
_CPU_CLOCK = time.thread_time
_WALL_CLOCK = time.perf_counter


@dataclass(frozen=True)
class Latency:
    """CPU inference time of one model.

    Attributes:
        ms_per_image: Batch size -> milliseconds per image: the least timed call's time over the batch size.
        image_size: The side of the square input.
        threads: torch threads it ran on.
        repeats: Timed calls at batch 1 (after one warm-up call); a batch of ``b`` images is timed
            ``calls_per_batch(repeats, b)`` times.
        params: The model's parameter count.
        torch: torch's version.
        statistic: Which figure ``ms_per_image`` holds: ``"least thread CPU time"`` on one thread,
            ``"least wall time"`` on more.
    """

    ms_per_image: dict[int, float]
    image_size: int
    threads: int
    repeats: int
    params: int
    torch: str
    statistic: str

    def to_dict(self) -> dict[str, Any]:
        """A JSON object (batch sizes as string keys), for a trial attribute or a config."""
        return {"ms_per_image": {str(b): ms for b, ms in self.ms_per_image.items()}, "image_size": self.image_size,
                "threads": self.threads, "repeats": self.repeats, "params": self.params, "torch": self.torch,
                "statistic": self.statistic}


def calls_per_batch(repeats: int, batch: int) -> int:
    """Timed calls at batch size ``batch``: about ``repeats`` images, in at least 3 calls."""
    return max(3, math.ceil(repeats / batch))


def measure_latency(model: torch.nn.Module, *, image_size: int, batch_sizes: Sequence[int] = (1, 32),
                    repeats: int = 15, threads: int = 1) -> Latency:
    """Milliseconds per image of ``model``'s forward pass on the CPU, for each batch size.

    Args:
        model: A trained model (any device; it is copied to the CPU, the original is not touched).
        image_size: The side of the square images it takes.
        batch_sizes: Batch sizes to time: 1 is a single request, 32 a batch job.
        repeats: Timed calls at batch 1 (larger batches: ``calls_per_batch``); the least counts.
        threads: torch threads for the measurement (torch's own setting is restored after). On one
            thread the clock is the thread's CPU time, on more the wall time.

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
    clock, statistic = (_CPU_CLOCK, "least thread CPU time") if threads == 1 else (_WALL_CLOCK, "least wall time")
    model = copy.deepcopy(model).cpu().eval().to(memory_format=torch.channels_last)
    generator = torch.Generator().manual_seed(0)
    ms_per_image = {}
    with torch_session("cpu", threads), torch.inference_mode():
        for batch in batch_sizes:
            x = torch.randn(batch, 3, image_size, image_size, generator=generator)
            x = x.contiguous(memory_format=torch.channels_last)
            model(x)
            seconds = []
            for _ in range(calls_per_batch(repeats, batch)):
                started = clock()
                model(x)
                seconds.append(clock() - started)
            ms_per_image[batch] = 1000 * min(seconds) / batch
    return Latency(ms_per_image=ms_per_image, image_size=image_size, threads=threads, repeats=repeats,
                   params=count_parameters(model)[0], torch=torch.__version__, statistic=statistic)
