"""CPU latency of a model: the least timed call per batch size, on the clock the docstring names, and
the caller's torch and model left as they were.

Real times are recorded, never compared with a bound that load could cross: these machines are
shared and noisy. The statistic is checked on a scripted clock that the model itself advances.
"""

from __future__ import annotations

import json
import math
import time

import pytest
import torch

from maskopt.errors import MaskoptError
from maskopt.search.train import latency as latency_module
from maskopt.search.train.latency import calls_per_batch, measure_latency
from maskopt.search.train.models import build_model, count_parameters


def test_latency_is_measured_for_each_batch_size_and_threads_are_restored():
    model = build_model("mobilenetv3_small_050", num_classes=18, head="multi")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)  # the caller's setting, which the measurement (on 1 thread) must restore
    try:
        latency = measure_latency(model, image_size=32, batch_sizes=(1, 32), repeats=2, threads=1)
        assert torch.get_num_threads() == threads + 1
    finally:
        torch.set_num_threads(threads)

    assert list(latency.ms_per_image) == [1, 32]
    assert all(math.isfinite(ms) and ms > 0 for ms in latency.ms_per_image.values()), latency
    assert (latency.image_size, latency.threads, latency.repeats) == (32, 1, 2)
    assert latency.statistic == "least thread CPU time"
    assert latency.params == count_parameters(model)[0] and latency.torch == torch.__version__
    # The caller's model is untouched: still in train mode, same weights, default memory format.
    assert model.training and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert model.model.conv_stem.weight.is_contiguous()
    data = json.loads(json.dumps(latency.to_dict()))
    assert data["ms_per_image"] == {"1": latency.ms_per_image[1], "32": latency.ms_per_image[32]}
    assert data["params"] == latency.params and data["threads"] == 1
    assert data["statistic"] == "least thread CPU time"


class _Scripted(torch.nn.Module):
    """A model whose every call takes the next scripted number of seconds on a fake clock.

    ``advance`` is a function, which ``copy.deepcopy`` keeps as it is: the copy that
    ``measure_latency`` times still moves the test's clock.
    """

    def __init__(self, advance):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 1, 1)
        self.advance = advance

    def forward(self, x):
        self.advance(x.shape[0])
        return self.conv(x)


@pytest.fixture
def scripted(monkeypatch):
    """(model, calls) where each call's time comes from ``script[batch]`` in order: the warm-up first."""
    now, calls, script = [0.0], [], {}

    def advance(batch):
        seconds = script[batch][sum(b == batch for b in calls)]
        calls.append(batch)
        now[0] += seconds

    monkeypatch.setattr(latency_module, "_CPU_CLOCK", lambda: now[0])
    return _Scripted(advance), calls, script


def test_the_figure_is_the_least_timed_call_and_the_warm_up_is_not_timed(scripted):
    model, calls, script = scripted
    # Batch 1: a warm-up faster than any timed call, then 4 calls; batch 32: a warm-up, then 3 calls.
    script[1] = [0.001, 0.020, 0.012, 0.015, 0.030]
    script[32] = [0.001, 0.640, 0.320, 0.480]
    latency = measure_latency(model, image_size=8, repeats=4)
    assert calls == [1] * 5 + [32] * 4  # one warm-up, then calls_per_batch(4, b) timed calls
    assert latency.ms_per_image == pytest.approx({1: 12.0, 32: 10.0})  # 0.012 s / 1 and 0.320 s / 32
    assert latency.statistic == "least thread CPU time" and latency.repeats == 4


def test_slow_calls_injected_do_not_move_the_figure(scripted):
    model, calls, script = scripted
    quiet = [0.005] + [0.010] * 15
    script[1] = quiet
    steady = measure_latency(model, image_size=8, batch_sizes=(1,)).ms_per_image[1]
    calls.clear()
    # Other processes slow 13 of the 15 calls, some of them tenfold: contention only ever adds time.
    script[1] = [0.005, 0.100, 0.010, 0.050, 0.020, 0.100, 0.015, 0.100, 0.030, 0.010, 0.100, 0.012, 0.100, 0.040,
                 0.090, 0.100]
    busy = measure_latency(model, image_size=8, batch_sizes=(1,)).ms_per_image[1]
    assert busy == pytest.approx(steady) and steady == pytest.approx(10.0)


def test_calls_per_batch_time_about_as_many_images_in_at_least_three_calls():
    assert [calls_per_batch(15, b) for b in (1, 2, 4, 5, 32)] == [15, 8, 4, 3, 3]
    assert calls_per_batch(1, 1) == 3


class _Sleeper(torch.nn.Module):
    """A model whose call sleeps: time off the CPU, as when the thread waits for a core."""

    def __init__(self, seconds: float):
        super().__init__()
        self.seconds = seconds
        self.linear = torch.nn.Linear(1, 1)

    def forward(self, x):
        time.sleep(self.seconds)
        return x


def test_time_off_the_cpu_counts_on_one_thread_only_on_the_wall_clock():
    # On one thread the clock is the thread's CPU time: a call that sleeps 50 ms costs (almost) none of
    # it. On two threads it is wall time, which a sleep can only lengthen.
    one = measure_latency(_Sleeper(0.05), image_size=4, batch_sizes=(1,), repeats=1, threads=1)
    two = measure_latency(_Sleeper(0.05), image_size=4, batch_sizes=(1,), repeats=1, threads=2)
    assert one.statistic == "least thread CPU time" and one.ms_per_image[1] < 25
    assert two.statistic == "least wall time" and two.ms_per_image[1] >= 50


@pytest.mark.parametrize("bad", [{"batch_sizes": ()}, {"batch_sizes": (0, 32)}, {"repeats": 0}, {"threads": 0},
                                 {"image_size": 0}])
def test_latency_refuses_sizes_below_one(bad):
    model = build_model("resnet10t", num_classes=2)
    with pytest.raises(MaskoptError, match=r"latency needs image_size, repeats, threads and batch sizes of at least 1"):
        measure_latency(model, **{"image_size": 32, **bad})
