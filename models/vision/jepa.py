"""I-JEPA: predict, from a context block, the target encoder's features of masked blocks.

Read top to bottom: the encoder built from the config, the network (context encoder,
predictor, EMA target encoder), and its loss in ``forward`` (facebookresearch/ijepa
``src/train.py``: targets are the layer-normed target-encoder tokens of the *full* image,
the loss smooth L1 on the predicted target tokens), plus, on a night that continues last
night's weights, CaSSLe's feature distillation against last night's frozen encoder
(:mod:`models.distill`).
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from core.config import JepaConfig
from models.distill import DistillPredictor, distill_loss
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
    """Context encoder + predictor (trained) and target encoder (EMA of the context encoder);
    after :meth:`start_distillation`, also last night's frozen encoder and a distillation predictor.

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
        # Set by start_distillation on a night that continues a checkpoint; None otherwise.
        self.old_encoder: VisionTransformer | None = None
        self.distill_predictor: DistillPredictor | None = None

    def start_distillation(self, hidden: int) -> DistillPredictor:
        """Freeze a copy of the context encoder as it stands (last night's, once its checkpoint
        is loaded) and make a fresh distillation predictor, whose parameters the caller trains.

        Args:
            hidden: the predictor's hidden width (``models.jepa.distill_hidden``).
        Returns:
            the predictor (on the encoder's device).
        """
        device = self.encoder.patch_embed.weight.device
        self.old_encoder = copy.deepcopy(self.encoder).requires_grad_(False).eval()
        self.distill_predictor = DistillPredictor(self.encoder.dim, hidden).to(device)
        return self.distill_predictor

    def train(self, mode: bool = True) -> "JEPA":
        super().train(mode)
        if self.old_encoder is not None:
            self.old_encoder.eval()  # frozen: always the network it was last night
        return self

    def forward(self, images: torch.Tensor, context_idx: torch.Tensor,
                target_idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The I-JEPA loss of one batch, and the distillation loss.

        Args:
            images: ``(B, 3, S, S)`` normalised pixels.
            context_idx: ``(B, Nc)`` patches the context encoder sees.
            target_idx: ``(M, B, Nt)`` patches of the M target blocks.
        Returns:
            ``(jepa, distill)``: the scalar smooth-L1 loss between predicted and target
            tokens, and :func:`models.distill.distill_loss` (a float32 zero before
            :meth:`start_distillation`). The caller weighs and adds them.
        """
        M, B, Nt = target_idx.shape
        with torch.no_grad():
            h = self.target_encoder(images)  # (B, N, D)
            h = F.layer_norm(h, (h.size(-1),))
            h = apply_masks(h.repeat(M, 1, 1), target_idx.reshape(M * B, Nt))  # (M*B, Nt, D)
        z = self.encoder(images, context_idx)  # (B, Nc, D)
        distill = self._distill(images, context_idx, z)
        z = self.predictor(z, context_idx, target_idx)  # (M*B, Nt, D)
        return F.smooth_l1_loss(z.float(), h.float()), distill

    def _distill(self, images: torch.Tensor, context_idx: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """CaSSLe's term on the context encoder's own input.

        CaSSLe feeds the same view to the online and the frozen network and distils the
        features the method's loss starts from. Here that is the context encoder on the
        context patches: its tokens ``z`` are already computed for the I-JEPA loss, so the
        term costs one no-grad forward of the old encoder over the same (fewer than N)
        patches and no second backward. Tokens are mean-pooled, the pooling the memory's
        embeddings use (``models.vision.embed``), so what is kept is what search compares.
        The old network is last night's *context* encoder (CaSSLe freezes the online
        network); the EMA target encoder, which the night embeds with, follows it.
        """
        if self.old_encoder is None:
            return torch.zeros((), device=z.device)
        with torch.no_grad():
            old = self.old_encoder(images, context_idx).mean(dim=1)  # (B, D)
        return distill_loss(self.distill_predictor(z.mean(dim=1)), old)
