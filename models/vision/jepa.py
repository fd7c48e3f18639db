"""I-JEPA: predict, from a context block, the target encoder's features of masked blocks.

Read top to bottom: the encoder built from the config, the network (context encoder,
predictor, EMA target encoder), and its loss in ``forward`` (facebookresearch/ijepa
``src/train.py``: targets are the layer-normed target-encoder tokens of the *full* image,
the loss smooth L1 on the predicted target tokens).
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from core.config import JepaConfig
from models.vision.masks import apply_masks
from models.vision.vit import VisionTransformer, ViTPredictor

# Pixel standardisation (ImageNet statistics: a convention, no pretrained weights involved).
PIXEL_MEAN = (0.485, 0.456, 0.406)
PIXEL_STD = (0.229, 0.224, 0.225)

# Keys of JepaConfig that fix the shape of the weights: a checkpoint trained with other
# values cannot be continued.
ARCH_KEYS = ("img_size", "patch_size", "dim", "depth", "heads", "pred_dim", "pred_depth",
             "pred_heads", "mlp_ratio")


def build_encoder(cfg: JepaConfig) -> VisionTransformer:
    """The ViT encoder the config describes (fresh weights from the current RNG)."""
    return VisionTransformer(cfg.img_size, cfg.patch_size, cfg.dim, cfg.depth, cfg.heads, cfg.mlp_ratio)


class JEPA(nn.Module):
    """Context encoder + predictor (trained) and target encoder (EMA of the context encoder).

    Args:
        cfg: the ``models.jepa`` config.
    """

    def __init__(self, cfg: JepaConfig):
        super().__init__()
        self.encoder = build_encoder(cfg)
        self.predictor = ViTPredictor(self.encoder.num_patches, cfg.dim, cfg.pred_dim,
                                      cfg.pred_depth, cfg.pred_heads, cfg.mlp_ratio)
        # Starts equal to the encoder; only ever changed by models.ema.EMA.step.
        self.target_encoder = copy.deepcopy(self.encoder).requires_grad_(False)

    def forward(self, images: torch.Tensor, context_idx: torch.Tensor,
                target_idx: torch.Tensor) -> torch.Tensor:
        """The I-JEPA loss of one batch.

        Args:
            images: ``(B, 3, S, S)`` normalised pixels.
            context_idx: ``(B, Nc)`` patches the context encoder sees.
            target_idx: ``(M, B, Nt)`` patches of the M target blocks.
        Returns:
            scalar smooth-L1 loss between predicted and target tokens.
        """
        M, B, Nt = target_idx.shape
        with torch.no_grad():
            h = self.target_encoder(images)  # (B, N, D)
            h = F.layer_norm(h, (h.size(-1),))
            h = apply_masks(h.repeat(M, 1, 1), target_idx.reshape(M * B, Nt))  # (M*B, Nt, D)
        z = self.encoder(images, context_idx)  # (B, Nc, D)
        z = self.predictor(z, context_idx, target_idx)  # (M*B, Nt, D)
        return F.smooth_l1_loss(z.float(), h.float())
