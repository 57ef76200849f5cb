import pytest
import torch

from maskopt.errors import MaskoptError
from maskopt.search.train.augment import BatchAugment

SIZE = 32


def _batch(batch=8, size=SIZE):
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(123))


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def test_zero_strength_is_identity():
    images = _batch()
    assert BatchAugment(0.0, image_size=SIZE)(images, _gen(0)) is images


@pytest.mark.parametrize("strength", [0.1, 0.5, 1.0])
@pytest.mark.parametrize("batch", [1, 8])
def test_shape_dtype_range_kept(strength, batch):
    images = _batch(batch)
    out = BatchAugment(strength, image_size=SIZE)(images, _gen(0))
    assert out.shape == images.shape and out.dtype == images.dtype
    assert 0.0 <= out.min() and out.max() <= 1.0
    assert not torch.equal(out, images)


def test_float64_batch_keeps_dtype():
    images = _batch().double()
    assert BatchAugment(1.0, image_size=SIZE)(images, _gen(0)).dtype == torch.float64


def test_same_seed_same_result_other_seed_differs():
    images = _batch()
    augment = BatchAugment(0.7, image_size=SIZE)
    first = augment(images, _gen(5))
    assert torch.equal(first, augment(images, _gen(5)))
    assert not torch.equal(first, augment(images, _gen(6)))


def test_samples_get_their_own_draws():
    images = _batch(1).expand(4, -1, -1, -1).contiguous()
    out = BatchAugment(1.0, image_size=SIZE)(images, _gen(0))
    assert not torch.equal(out[0], out[1])


def test_input_not_modified():
    images = _batch()
    copy = images.clone()
    BatchAugment(1.0, image_size=SIZE)(images, _gen(0))
    assert torch.equal(images, copy)


def test_strength_out_of_range():
    with pytest.raises(MaskoptError, match=r"aug_strength must lie in \[0, 1\], got 1.5"):
        BatchAugment(1.5, image_size=SIZE)


def test_wrong_input():
    augment = BatchAugment(0.5, image_size=SIZE)
    with pytest.raises(ValueError, match="takes float images in 0..1, got dtype torch.uint8"):
        augment(torch.zeros(2, 3, SIZE, SIZE, dtype=torch.uint8), _gen(0))
    with pytest.raises(ValueError, match=r"expects \[B, 3, 32, 32\], got \[2, 3, 16, 16\]"):
        augment(torch.zeros(2, 3, 16, 16), _gen(0))
