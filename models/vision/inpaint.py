"""Feature-space completion: inpaint the vision encoder's masked patch tokens (issue #16).

The seed's DINOv2 experiment on our own I-JEPA encoder: the encoder sees only a fragment of
a frame (the patches listed in ``keep``, encoded without their surroundings, as I-JEPA's
context encoder does), and a small transformer predicts the tokens the encoder gives the
whole, clean frame, at every position of the grid. The mean of that predicted grid is a
query vector in the space the memories are stored in.

Three parts, apart as in ijepa: :func:`random_patch_mask` draws which patches stay visible
(a collator's job; the network receives index tensors), :class:`PatchInpainter` is the
network, :func:`inpaint_loss` its loss. The trainer is :mod:`models.vision.inpaint_train`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from models.vision.masks import apply_masks
from models.vision.vit import Block, _init_weights, sincos_2d


def random_patch_mask(batch: int, grid: int, keep_share: float, generator: torch.Generator, *,
                      block: bool = True) -> torch.Tensor:
    """Which patches of each image stay visible.

    Args:
        batch: images.
        grid: patches per side.
        keep_share: share of the ``grid * grid`` patches kept, in (0, 1].
        generator: draws the positions (CPU); the same generator state gives the same masks.
        block: one contiguous rectangle per image (a crop-like fragment: 25 % of the area is
            a half-side square), at a uniform position; ``False``: patches scattered at random.
    Returns:
        ``(batch, K)`` int64 patch indices in raster order, sorted; ``K`` is the same for every
        image (a block's ``h * w``, or ``round(keep_share * grid**2)``), at least 1.
    Raises:
        ValueError: ``keep_share`` outside (0, 1] or a non-positive ``grid``.
    """
    if not 0 < keep_share <= 1:
        raise ValueError(f"keep_share must be in (0, 1], got {keep_share}")
    if grid < 1:
        raise ValueError(f"grid must be positive, got {grid}")
    n = grid * grid
    if not block:
        k = max(1, round(keep_share * n))
        scores = torch.rand(batch, n, generator=generator)
        return scores.argsort(dim=1)[:, :k].sort(dim=1).values
    h = min(grid, max(1, round(grid * math.sqrt(keep_share))))
    w = min(grid, max(1, round(keep_share * n / h)))
    top = torch.randint(0, grid - h + 1, (batch, 1, 1), generator=generator)
    left = torch.randint(0, grid - w + 1, (batch, 1, 1), generator=generator)
    rows = top + torch.arange(h).view(1, h, 1)      # (B, h, 1)
    cols = left + torch.arange(w).view(1, 1, w)     # (B, 1, w)
    return (rows * grid + cols).reshape(batch, h * w)  # raster order: rows outer, columns inner


class PatchInpainter(nn.Module):
    """From the tokens of the visible patches, predict the clean token grid.

    Visible tokens are standardised with the clean tokens' per-channel statistics (set by the
    trainer: ``token_mean``, ``token_std``, saved with the weights), embedded, and placed at
    their positions; every other position holds a learned mask token. Both get fixed 2-D
    sin-cos positions; pre-norm ViT blocks (:mod:`models.vision.vit`) mix them, and a linear
    head predicts the standardised clean token of every position, visible ones included
    (the encoder saw those without their surroundings, so their clean tokens differ too).

    Args:
        num_patches: patches of the encoder's grid (a square number).
        enc_dim: the encoder's token width (input and output).
        dim, depth, heads, mlp_ratio: the inpainter's own sizes.
    """

    def __init__(self, num_patches: int, enc_dim: int, dim: int, depth: int, heads: int,
                 mlp_ratio: float = 4.0):
        super().__init__()
        grid = math.isqrt(num_patches)
        if grid * grid != num_patches:
            raise ValueError(f"num_patches must be a square number, got {num_patches}")
        self.num_patches = num_patches
        self.embed = nn.Linear(enc_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("pos_embed", sincos_2d(dim, grid).unsqueeze(0), persistent=False)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, enc_dim)
        self.register_buffer("token_mean", torch.zeros(enc_dim))
        self.register_buffer("token_std", torch.ones(enc_dim))
        _init_weights(self, self.blocks)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def standardise(self, tokens: torch.Tensor) -> torch.Tensor:
        """Encoder tokens ``(..., enc_dim)`` -> per-channel standardised (the loss's space)."""
        return (tokens - self.token_mean) / self.token_std

    def forward(self, visible: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Predict the standardised clean tokens of the whole grid.

        Args:
            visible: ``(B, K, enc_dim)`` encoder tokens of the visible patches.
            keep: ``(B, K)`` their patch indices.
        Returns:
            ``(B, N, enc_dim)`` predictions, standardised (see :meth:`complete` for tokens).
        """
        B = visible.shape[0]
        pos = self.pos_embed.to(visible.dtype).expand(B, -1, -1)               # (B, N, P)
        x = self.mask_token.to(visible.dtype) + pos                            # (B, N, P)
        seen = self.embed(self.standardise(visible)) + apply_masks(pos, keep)  # (B, K, P)
        x = x.scatter(1, keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]), seen)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))                                        # (B, N, enc_dim)

    @torch.no_grad()
    def complete(self, visible: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """The inpainted grid in the encoder's token space: ``(B, N, enc_dim)``."""
        return self(visible, keep) * self.token_std + self.token_mean


def inpaint_loss(pred: torch.Tensor, target: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
    """Smooth-L1 between predicted and clean standardised tokens.

    Args:
        pred: ``(B, N, D)`` :class:`PatchInpainter` output.
        target: ``(B, N, D)`` the clean tokens, standardised (:meth:`PatchInpainter.standardise`).
        positions: ``(B, M)`` patch indices to score (e.g. the masked ones); ``None``: all.
    Returns:
        a scalar.
    """
    if positions is not None:
        pred, target = apply_masks(pred, positions), apply_masks(target, positions)
    return F.smooth_l1_loss(pred, target)


def masked_positions(keep: torch.Tensor, num_patches: int) -> torch.Tensor:
    """The patches not in ``keep`` ``(B, K)``: ``(B, N - K)`` sorted indices."""
    hidden = torch.ones(keep.shape[0], num_patches, dtype=torch.bool, device=keep.device)
    hidden.scatter_(1, keep, False)
    return hidden.nonzero()[:, 1].reshape(keep.shape[0], num_patches - keep.shape[1])
