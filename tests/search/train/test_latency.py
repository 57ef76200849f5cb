"""CPU latency of a model: positive, finite figures, and the caller's torch and model left as they were.

Times are recorded, never compared with a bound: these machines are shared and noisy.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from maskopt.errors import MaskoptError
from maskopt.search.train.latency import measure_latency
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
    assert latency.params == count_parameters(model)[0] and latency.torch == torch.__version__
    # The caller's model is untouched: still in train mode, same weights, default memory format.
    assert model.training and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert model.model.conv_stem.weight.is_contiguous()
    data = json.loads(json.dumps(latency.to_dict()))
    assert data["ms_per_image"] == {"1": latency.ms_per_image[1], "32": latency.ms_per_image[32]}
    assert data["params"] == latency.params and data["threads"] == 1


@pytest.mark.parametrize("bad", [{"batch_sizes": ()}, {"batch_sizes": (0, 32)}, {"repeats": 0}, {"threads": 0},
                                 {"image_size": 0}])
def test_latency_refuses_sizes_below_one(bad):
    model = build_model("resnet10t", num_classes=2)
    with pytest.raises(MaskoptError, match=r"latency needs image_size, repeats, threads and batch sizes of at least 1"):
        measure_latency(model, **{"image_size": 32, **bad})
