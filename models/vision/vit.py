"""A plain ViT encoder and the narrow ViT predictor of I-JEPA (facebookresearch/ijepa).

Patch embedding, fixed 2-D sin-cos positions, no class token, pre-norm blocks whose
attention is :func:`torch.nn.functional.scaled_dot_product_attention` (flash / memory-
efficient kernels on CUDA). Neither network knows about masking beyond the index tensors
it is given (see :mod:`models.masks`).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from models.vision.masks import apply_masks


def sincos_2d(dim: int, grid: int) -> torch.Tensor:
    """Fixed 2-D sin-cos positions of a ``grid x grid`` patch grid, raster order.

    Args:
        dim: embedding width, a multiple of 4 (half for rows, half for columns).
        grid: patches per side.
    Returns:
        ``(grid * grid, dim)`` float32 tensor.
    """
    if dim % 4:
        raise ValueError(f"sin-cos positions need a width divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))  # (D/4,)
    rows, cols = torch.meshgrid(torch.arange(grid, dtype=torch.float64),
                                torch.arange(grid, dtype=torch.float64), indexing="ij")

    def encode(pos: torch.Tensor) -> torch.Tensor:  # (N,) -> (N, D/2)
        angles = pos.reshape(-1, 1) * omega
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([encode(rows), encode(cols)], dim=1).float()


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (B, H, N, D/H)
        return self.proj(x.transpose(1, 2).reshape(B, N, D))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLP(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def _init_weights(module: nn.Module, blocks: nn.ModuleList, std: float = 0.02) -> None:
    """ijepa's init: truncated normal linears/convs, unit norms, and the residual output
    projections of block ``i`` scaled by ``1/sqrt(2 i)`` so deeper stacks start stable."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.trunc_normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    with torch.no_grad():
        for i, block in enumerate(blocks, start=1):
            block.attn.proj.weight.div_(math.sqrt(2.0 * i))
            block.mlp.fc2.weight.div_(math.sqrt(2.0 * i))


class VisionTransformer(nn.Module):
    """ViT encoder returning layer-normed patch tokens (no class token).

    Args:
        img_size: square input side in pixels.
        patch_size: patch side; ``img_size`` must be a multiple of it.
        dim, depth, heads, mlp_ratio: the usual ViT sizes.
    """

    def __init__(self, img_size: int, patch_size: int, dim: int, depth: int, heads: int,
                 mlp_ratio: float = 4.0):
        super().__init__()
        self.img_size = img_size
        self.grid = img_size // patch_size
        self.num_patches = self.grid * self.grid
        self.dim = dim
        self.patch_embed = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)
        # A buffer, not a parameter: fixed positions are never trained nor decayed.
        self.register_buffer("pos_embed", sincos_2d(dim, self.grid).unsqueeze(0), persistent=False)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        _init_weights(self, self.blocks)

    def forward(self, images: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Encode images, optionally only the patches listed in ``keep``.

        Args:
            images: ``(B, 3, S, S)`` normalised pixels.
            keep: ``(B, K)`` patch indices to encode (the context); ``None`` encodes all.
        Returns:
            ``(B, K or N, dim)`` tokens after the final LayerNorm.
        """
        x = self.patch_embed(images).flatten(2).transpose(1, 2)  # (B, N, D)
        x = x + self.pos_embed.to(x.dtype)
        if keep is not None:
            x = apply_masks(x, keep)  # (B, K, D)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


class ViTPredictor(nn.Module):
    """I-JEPA predictor: from context tokens, predict the encoder's tokens at target positions.

    Args:
        num_patches: patches of the encoder's grid (a square number).
        dim: encoder width (input and output).
        pred_dim, depth, heads, mlp_ratio: the predictor's own (narrower) sizes.
    """

    def __init__(self, num_patches: int, dim: int, pred_dim: int, depth: int, heads: int,
                 mlp_ratio: float = 4.0):
        super().__init__()
        grid = int(round(math.sqrt(num_patches)))
        self.embed = nn.Linear(dim, pred_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, pred_dim))
        self.register_buffer("pos_embed", sincos_2d(pred_dim, grid).unsqueeze(0), persistent=False)
        self.blocks = nn.ModuleList(Block(pred_dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(pred_dim, eps=1e-6)
        self.proj = nn.Linear(pred_dim, dim)
        _init_weights(self, self.blocks)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def forward(self, context: torch.Tensor, context_idx: torch.Tensor,
                target_idx: torch.Tensor) -> torch.Tensor:
        """Predict every target block of every image.

        Args:
            context: ``(B, Nc, dim)`` context-encoder tokens.
            context_idx: ``(B, Nc)`` their patch indices.
            target_idx: ``(M, B, Nt)`` patch indices of the M target blocks.
        Returns:
            ``(M * B, Nt, dim)`` predictions, target-block major (block 0 of every image
            first), the order :func:`models.masks.apply_masks` gives the targets.
        """
        M, B, Nt = target_idx.shape
        pos = self.pos_embed.to(context.dtype).expand(B, -1, -1)  # (B, N, P)
        x = self.embed(context) + apply_masks(pos, context_idx)  # (B, Nc, P)
        x = x.repeat(M, 1, 1)  # (M*B, Nc, P)
        target_pos = apply_masks(pos.repeat(M, 1, 1), target_idx.reshape(M * B, Nt))  # (M*B, Nt, P)
        queries = self.mask_token.to(x.dtype) + target_pos
        x = torch.cat([x, queries], dim=1)  # (M*B, Nc+Nt, P)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x[:, -Nt:])
        return self.proj(x)  # (M*B, Nt, dim)
