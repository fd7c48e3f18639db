"""Fragments of frames: what a glimpse, a crop or a vague memory of a moment looks like.

The reconstructors learn to map the embedding of a damaged view of a frame back to the
embedding of its whole clip; these are the damages, drawn per image from a CPU generator
and applied to whole uint8 batches on their device.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from models.vision.frames import random_resized_crop

KINDS = ("crop", "occlude", "blur")
OCCLUDED_SHARE = (0.3, 0.6)  # of the image area hidden behind a grey block
BLUR_FACTORS = (4, 6, 8)  # downscale factor before scaling back up


def _crop(images: torch.Tensor, scale: tuple[float, float], generator: torch.Generator) -> torch.Tensor:
    crops = random_resized_crop(images.float(), scale, generator, flip=False)
    return crops.round().clamp(0, 255).to(torch.uint8)


def _occlude(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    B, _, S, _ = images.shape
    area = torch.empty(B).uniform_(*OCCLUDED_SHARE, generator=generator)
    aspect = torch.empty(B).uniform_(0.5, 2.0, generator=generator)
    w = ((area * aspect).sqrt().clamp(max=1.0) * S).long().clamp(min=1)
    h = ((area / aspect).sqrt().clamp(max=1.0) * S).long().clamp(min=1)
    x0 = (torch.rand(B, generator=generator) * (S - w + 1)).long()
    y0 = (torch.rand(B, generator=generator) * (S - h + 1)).long()
    grid = torch.arange(S)
    inside_x = (grid[None, :] >= x0[:, None]) & (grid[None, :] < (x0 + w)[:, None])  # (B, S)
    inside_y = (grid[None, :] >= y0[:, None]) & (grid[None, :] < (y0 + h)[:, None])
    block = (inside_y[:, :, None] & inside_x[:, None, :]).unsqueeze(1).to(images.device)  # (B, 1, S, S)
    return torch.where(block, torch.full_like(images, 128), images)


def _blur(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    S = images.shape[-1]
    factors = torch.tensor(BLUR_FACTORS)[torch.randint(len(BLUR_FACTORS), (images.shape[0],), generator=generator)]
    out = images.clone()
    for factor in BLUR_FACTORS:
        rows = (factors == factor).nonzero().flatten().to(images.device)
        if len(rows):
            small = F.interpolate(images[rows].float(), size=max(1, S // factor), mode="area")
            out[rows] = F.interpolate(small, size=S, mode="bilinear", align_corners=False).round().clamp(0, 255).to(
                torch.uint8)
    return out


def degrade(images: torch.Tensor, crop_scale: tuple[float, float], generator: torch.Generator,
            mix: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> tuple[torch.Tensor, list[str]]:
    """One damaged view of each image: a small crop, a grey block over much of it, or a blur.

    Args:
        images: ``(B, 3, S, S)`` uint8 on any device.
        crop_scale: (low, high) share of the area a crop keeps.
        generator: a CPU generator; the result is a pure function of it and the images.
        mix: relative shares of the kinds, in :data:`KINDS` order.
    Returns:
        ``(B, 3, S, S)`` uint8 views on the images' device, and the kind of each.
    """
    kind = torch.multinomial(torch.tensor(mix, dtype=torch.float), images.shape[0], replacement=True,
                             generator=generator)
    out = torch.empty_like(images)
    crop = _crop(images, crop_scale, generator)
    occluded = _occlude(images, generator)
    blurred = _blur(images, generator)
    for i, views in enumerate((crop, occluded, blurred)):
        rows = (kind == i).nonzero().flatten().to(images.device)
        out[rows] = views[rows]
    return out, [KINDS[int(k)] for k in kind]
