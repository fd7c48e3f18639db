"""I-JEPA multi-block masks, made in a collator apart from the model (facebookresearch/ijepa
``src/masks/multiblock.py``), and :func:`apply_masks`, the one way a model uses them.

Per batch, one target block size and one context block size are drawn; per image, ``M``
target blocks and one context block are placed, and the targets are cut out of the
context, so no target patch is ever visible to the context encoder. Everything is drawn
from a generator seeded by ``(seed, step)``: the masks are a pure function of the step.

Differences from ijepa, on purpose: block positions range over every valid place
(ijepa's ``randint(0, H - h)`` never touches the last row); an image whose context keeps
fewer than ``min_keep`` patches is re-drawn whole instead of relaxing the "no overlap"
rule (ijepa's fallback would leak targets into the context); all contexts are cut to the
batch's smallest by a random subset rather than the first patches in raster order (which
would always drop the bottom of the image). Placement is vectorised with NumPy so a large
batch costs about a millisecond, keeping the GPU fed without worker processes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


def apply_masks(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Keep the listed tokens of each sequence.

    Args:
        x: ``(B, N, D)`` tokens.
        idx: ``(B, K)`` int64 token indices per sequence.
    Returns:
        ``(B, K, D)``: ``out[b, k] = x[b, idx[b, k]]``.
    """
    return torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.size(-1)))


@dataclass
class MaskBatch:
    """Index tensors for one batch (patch indices in raster order of the grid)."""

    context: torch.Tensor  # (B, Nc) int64, sorted; patches the context encoder sees
    targets: torch.Tensor  # (M, B, Nt) int64, sorted; patches each target block covers

    def pin_memory(self) -> "MaskBatch":
        return MaskBatch(self.context.pin_memory(), self.targets.pin_memory())

    def to(self, device, non_blocking: bool = False) -> "MaskBatch":
        return MaskBatch(self.context.to(device, non_blocking=non_blocking),
                         self.targets.to(device, non_blocking=non_blocking))


def _block_size(rng: np.random.Generator, grid: int, scale: tuple[float, float],
                aspect: tuple[float, float]) -> tuple[int, int]:
    """Height and width (in patches) of a block covering ``scale`` of the grid at ``aspect``."""
    area = grid * grid * rng.uniform(*scale)
    ratio = rng.uniform(*aspect)
    h = int(round(math.sqrt(area * ratio)))
    w = int(round(math.sqrt(area / ratio)))
    return min(max(h, 1), grid), min(max(w, 1), grid)


def _place(rng: np.random.Generator, grid: int, size: tuple[int, int], shape: tuple) -> np.ndarray:
    """Boolean masks ``shape + (grid, grid)`` of blocks of ``size`` at random positions."""
    h, w = size
    top = rng.integers(0, grid - h + 1, size=shape)[..., None]
    left = rng.integers(0, grid - w + 1, size=shape)[..., None]
    line = np.arange(grid)
    rows = (line >= top) & (line < top + h)  # shape + (grid,)
    cols = (line >= left) & (line < left + w)
    return rows[..., :, None] & cols[..., None, :]


# Static masks: the context size is the median of the cuts of this many probe batches of this
# many images (drawn with their own tag: never a training step's masks).
STATIC_PROBE_STEPS, STATIC_PROBE_BATCH, STATIC_PROBE_TAG = 32, 128, 0x57A7


def _smallest_block(grid: int, scale: tuple[float, float], aspect: tuple[float, float]) -> int:
    """The fewest patches a target block of these ranges can have (:func:`_block_size` over
    a fine grid of the ranges, ends included)."""
    sizes = []
    for share in np.linspace(*scale, 41):
        for ratio in np.linspace(*aspect, 41):
            area = grid * grid * share
            h = min(max(int(round(math.sqrt(area * ratio))), 1), grid)
            w = min(max(int(round(math.sqrt(area / ratio))), 1), grid)
            sizes.append(h * w)
    return min(sizes)


class MultiBlockMaskCollator:
    """Draws I-JEPA context and target masks for a batch.

    Args:
        grid: patches per side of the image.
        num_targets: target blocks per image (M).
        target_scale: (low, high) share of the patches one target block covers.
        target_aspect: (low, high) height/width ratio of the target blocks.
        context_scale: (low, high) share covered by the square context block before the
            targets are removed from it.
        min_keep: fewest context patches an image may keep.
        seed: base seed; masks for a step depend only on ``(seed, step)``.
        static: the same number of context and target patches at every step
            (:attr:`static_sizes`), so that ``torch.compile`` builds one graph with fixed
            shapes instead of one with dynamic token counts (which failed to compile on
            torch 2.11 with CUDA, and on 2.9.1 on a CPU). Each target block keeps a random
            subset of its patches of the smallest block's size, and each context the median
            of the context sizes the dynamic masks of :data:`STATIC_PROBE_STEPS` probe
            batches were cut to (an image that keeps fewer is drawn again, as for
            ``min_keep``).
    """

    max_redraws = 200

    def __init__(self, grid: int, num_targets: int, target_scale: tuple[float, float],
                 target_aspect: tuple[float, float], context_scale: tuple[float, float],
                 min_keep: int, seed: int = 0, static: bool = False):
        if min_keep > grid * grid:
            raise ValueError(f"min_keep {min_keep} exceeds the {grid * grid} patches of the grid")
        self.grid = grid
        self.num_targets = num_targets
        self.target_scale = tuple(target_scale)
        self.target_aspect = tuple(target_aspect)
        self.context_scale = tuple(context_scale)
        self.min_keep = min_keep
        self.seed = seed
        # (context, target) patches every step keeps when static; None: as drawn.
        self.static_sizes: tuple[int, int] | None = None
        if static:
            probe = [self._draw(STATIC_PROBE_BATCH, np.random.default_rng([seed, i, STATIC_PROBE_TAG]))
                     for i in range(STATIC_PROBE_STEPS)]
            context = max(min_keep, int(np.median([m.context.shape[1] for m in probe])))
            self.static_sizes = (context, _smallest_block(grid, self.target_scale, self.target_aspect))

    def __call__(self, batch_size: int, step: int) -> MaskBatch:
        """Masks for ``batch_size`` images at global step ``step``.

        Returns:
            a :class:`MaskBatch` on the CPU.
        Raises:
            RuntimeError: the settings leave no way to keep ``min_keep`` context patches.
        """
        return self._draw(batch_size, np.random.default_rng([self.seed, step, 0x1E9A]))

    def _draw(self, batch_size: int, rng: np.random.Generator) -> MaskBatch:
        B, M, G = batch_size, self.num_targets, self.grid
        target_size = _block_size(rng, G, self.target_scale, self.target_aspect)
        context_size = _block_size(rng, G, self.context_scale, (1.0, 1.0))

        targets = _place(rng, G, target_size, (B, M))  # (B, M, G, G)
        context = _place(rng, G, context_size, (B,)) & ~targets.any(axis=1)  # (B, G, G)
        keep = self.min_keep if self.static_sizes is None else self.static_sizes[0]
        for _ in range(self.max_redraws):
            short = context.reshape(B, -1).sum(1) < keep
            if not short.any():
                break
            n = int(short.sum())
            targets[short] = _place(rng, G, target_size, (n, M))
            context[short] = _place(rng, G, context_size, (n,)) & ~targets[short].any(axis=1)
        else:
            raise RuntimeError(f"masks: could not keep {keep} context patches with targets "
                               f"of {target_size} x{M} and a context block of {context_size}")

        # Every target block lies wholly inside the grid, so each has exactly h*w patches;
        # a stable argsort of "not in block" lists a block's patches first, in raster order.
        flat_targets = targets.reshape(B * M, G * G)
        nt = target_size[0] * target_size[1]
        target_idx = np.argsort(~flat_targets, axis=1, kind="stable")[:, :nt]
        target_idx = target_idx.reshape(B, M, nt).transpose(1, 0, 2)  # (M, B, Nt)

        if self.static_sizes is not None:
            # A random subset of each block's patches, all blocks cut to the smallest size.
            nt = self.static_sizes[1]
            scores = np.where(flat_targets, rng.random(flat_targets.shape), np.inf)
            target_idx = np.sort(np.argsort(scores, axis=1)[:, :nt], axis=1)
            target_idx = target_idx.reshape(B, M, nt).transpose(1, 0, 2)

        flat_context = context.reshape(B, G * G)
        nc = int(flat_context.sum(1).min()) if self.static_sizes is None else self.static_sizes[0]
        scores = np.where(flat_context, rng.random(flat_context.shape), np.inf)
        context_idx = np.sort(np.argsort(scores, axis=1)[:, :nc], axis=1)  # (B, Nc)
        return MaskBatch(torch.from_numpy(np.ascontiguousarray(context_idx)).long(),
                         torch.from_numpy(np.ascontiguousarray(target_idx)).long())
