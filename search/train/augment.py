"""Batched training augmentation on image tensors, one knob: the strength ``aug_strength``.

Everything works on a whole batch ``[B, 3, H, W]`` at once (no PIL, no per-image loop), on
whatever device the batch lives on. Random numbers come from a CPU ``torch.Generator`` and
are then moved to the batch's device, so one seed gives the same augmentation on CPU and GPU.

Typical use in a training step::

    augment = BatchAugment(trial_strength, image_size=96)
    x = augment(images_uint8.float().div_(255), generator)   # then normalised by the caller
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from maskopt.errors import MaskoptError

# ITU-R 601 luma, as torchvision's rgb_to_grayscale.
_LUMA = (0.299, 0.587, 0.114)
# Cutout side lengths, as fractions of the image side.
_ERASE_SIDE = (0.1, 0.4)


class BatchAugment:
    """Random flip, affine, colour jitter and cutout for a batch, scaled by one strength.

    The policy at strength ``s`` (0 <= s <= 1), applied in this order, each sample drawing
    its own values uniformly from the ranges:

    ==================  ===================  ======================  ===============  ==============
    step                applied              range at strength s     at s = 0.5       at s = 1
    ==================  ===================  ======================  ===============  ==============
    brightness          every sample         x (1 +- 0.4 s)          x 0.8 .. 1.2     x 0.6 .. 1.4
    contrast            every sample         x (1 +- 0.4 s)          x 0.8 .. 1.2     x 0.6 .. 1.4
    saturation          every sample         x (1 +- 0.4 s)          x 0.8 .. 1.2     x 0.6 .. 1.4
    horizontal flip     probability 0.5      (on when s > 0)         p = 0.5          p = 0.5
    scale (zoom)        every sample         1 - 0.25 s .. 1 + 0.1 s 0.875 .. 1.05    0.75 .. 1.1
    rotation            every sample         +- 15 s degrees         +- 7.5 deg       +- 15 deg
    translation x, y    every sample         +- 0.1 s of the side    +- 5 %           +- 10 %
    cutout              probability 0.25 s   one rectangle, each     p = 0.125        p = 0.25
                                             side 10 .. 40 % of the
                                             image, filled with 0
    ==================  ===================  ======================  ===============  ==============

    Colour steps follow torchvision's ``ColorJitter`` (contrast around the image's mean grey,
    saturation around each pixel's grey) in a fixed order, clamping to [0, 1] after each.
    Flip, scale, rotation and translation form one affine map per sample, applied with a
    single bilinear ``grid_sample`` over the batch; pixels pulled from outside the image are
    0 (black). Cutout comes last. At ``s = 0`` the call returns its input unchanged.

    Args:
        strength: The strength ``s``, from 0 (no augmentation) to 1.
        image_size: Side of the square images the batches hold; a batch of another size is
            an error, since it means data and augmentation were configured apart.

    Raises:
        MaskoptError: ``strength`` outside [0, 1].
    """

    def __init__(self, strength: float, *, image_size: int):
        if not 0.0 <= strength <= 1.0:
            raise MaskoptError(f"aug_strength must lie in [0, 1], got {strength}")
        self.strength = float(strength)
        self.image_size = image_size

    def __repr__(self) -> str:
        return f"BatchAugment(strength={self.strength}, image_size={self.image_size})"

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augment a batch.

        Args:
            images: Float tensor ``[B, 3, image_size, image_size]`` with values in 0..1
                (not yet normalised), on any device.
            generator: A CPU generator; the only source of randomness.

        Returns:
            A new tensor of the same shape, dtype and device, values in 0..1; ``images``
            itself when the strength is 0.

        Raises:
            ValueError: ``images`` is not a float batch of the configured size.
        """
        if not images.is_floating_point():
            raise ValueError(f"BatchAugment takes float images in 0..1, got dtype {images.dtype}")
        if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[2:]) != (self.image_size,) * 2:
            raise ValueError(
                f"BatchAugment expects [B, 3, {self.image_size}, {self.image_size}], got {list(images.shape)}"
            )
        if self.strength == 0.0:
            return images
        draws = self._draw(images.shape[0], generator)
        draws = {name: value.to(device=images.device, dtype=images.dtype) for name, value in draws.items()}
        out = _jitter_colour(images, draws)
        out = _affine(out, draws)
        return _erase(out, draws)

    def _draw(self, batch: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Every random value of one call, drawn in a fixed order on the CPU."""
        s = self.strength

        def uniform(low: float, high: float) -> torch.Tensor:
            return low + (high - low) * torch.rand(batch, generator=generator, dtype=torch.float64)

        return {
            "brightness": uniform(1 - 0.4 * s, 1 + 0.4 * s),
            "contrast": uniform(1 - 0.4 * s, 1 + 0.4 * s),
            "saturation": uniform(1 - 0.4 * s, 1 + 0.4 * s),
            "flip": (torch.rand(batch, generator=generator) < 0.5).double(),
            "scale": uniform(1 - 0.25 * s, 1 + 0.1 * s),
            "angle": uniform(-math.radians(15 * s), math.radians(15 * s)),
            "shift_x": uniform(-0.1 * s, 0.1 * s),
            "shift_y": uniform(-0.1 * s, 0.1 * s),
            "erase": (torch.rand(batch, generator=generator) < 0.25 * s).double(),
            "erase_h": uniform(*_ERASE_SIDE),
            "erase_w": uniform(*_ERASE_SIDE),
            # Where the rectangle starts, as a fraction of the room left beside it.
            "erase_top": uniform(0.0, 1.0),
            "erase_left": uniform(0.0, 1.0),
        }


def _per_sample(values: torch.Tensor) -> torch.Tensor:
    return values.view(-1, 1, 1, 1)


def _grey(images: torch.Tensor) -> torch.Tensor:
    luma = torch.tensor(_LUMA, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images * luma).sum(dim=1, keepdim=True)


def _jitter_colour(images: torch.Tensor, draws: dict[str, torch.Tensor]) -> torch.Tensor:
    out = (images * _per_sample(draws["brightness"])).clamp_(0, 1)
    mean_grey = _grey(out).mean(dim=(1, 2, 3), keepdim=True)
    out = torch.lerp(mean_grey, out, _per_sample(draws["contrast"])).clamp_(0, 1)
    return torch.lerp(_grey(out), out, _per_sample(draws["saturation"])).clamp_(0, 1)


def _affine(images: torch.Tensor, draws: dict[str, torch.Tensor]) -> torch.Tensor:
    # grid_sample maps each output pixel to the input point it reads. For the picture
    # transform "flip, then rotate and zoom, then shift" that is the inverse map
    # p_in = F R^-1 (p_out - t) / scale, in coordinates from -1 to 1 (a shift of a fraction f
    # of the side is 2 f there). A flip F = diag(-1, 1) is its own inverse.
    cos, sin = torch.cos(draws["angle"]), torch.sin(draws["angle"])
    flip = 1 - 2 * draws["flip"]
    shift_x, shift_y = 2 * draws["shift_x"], 2 * draws["shift_y"]
    a = torch.stack([flip * cos, flip * sin, -sin, cos], dim=1).view(-1, 2, 2) / draws["scale"].view(-1, 1, 1)
    b = -(a @ torch.stack([shift_x, shift_y], dim=1).unsqueeze(2))
    grid = F.affine_grid(torch.cat([a, b], dim=2), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _erase(images: torch.Tensor, draws: dict[str, torch.Tensor]) -> torch.Tensor:
    size = images.shape[-1]
    heights = (draws["erase_h"] * size).round()
    widths = (draws["erase_w"] * size).round()
    tops = (draws["erase_top"] * (size - heights)).floor().view(-1, 1, 1)
    lefts = (draws["erase_left"] * (size - widths)).floor().view(-1, 1, 1)
    pos = torch.arange(size, device=images.device, dtype=images.dtype)
    rows = (pos.view(1, -1, 1) >= tops) & (pos.view(1, -1, 1) < tops + heights.view(-1, 1, 1))
    cols = (pos.view(1, 1, -1) >= lefts) & (pos.view(1, 1, -1) < lefts + widths.view(-1, 1, 1))
    hole = rows & cols & (draws["erase"].view(-1, 1, 1) > 0)
    return images.masked_fill(hole.unsqueeze(1), 0.0)
