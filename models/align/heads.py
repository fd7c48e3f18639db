"""CLIP-style alignment of the vision and audio spaces (Radford et al. 2021), after
mlfoundations/open_clip: a projection head per sense into one shared space, a learnable
temperature ``logit_scale`` initialised at ``ln(1/0.07)`` and the symmetric contrastive
loss of ``open_clip/loss.py:ClipLoss``. Positive pairs are a clip's vision vector (the
mean of its frames' embeddings) and its own audio vector; every other clip in the batch
is a negative.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from core.config import AlignConfig
from models.distributed import Ranks

MODALITIES = ("vision", "audio")
# open_clip clamps the learnable scale to at most 100 after each optimizer step.
MAX_LOGIT_SCALE = math.log(100)
INIT_LOGIT_SCALE = math.log(1 / 0.07)


class ProjectionHead(nn.Module):
    """One sense's embedding ``(B, in_dim)`` -> the shared space ``(B, dim)``, L2-normalised."""

    def __init__(self, in_dim: int, cfg: AlignConfig):
        super().__init__()
        if cfg.hidden:
            self.net = nn.Sequential(nn.Linear(in_dim, cfg.hidden), nn.GELU(), nn.Linear(cfg.hidden, cfg.dim))
        else:
            self.net = nn.Linear(in_dim, cfg.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(x), dim=-1)


def clip_loss(vision: torch.Tensor, audio: torch.Tensor, logit_scale: torch.Tensor,
              ranks: Ranks = Ranks(), rows: int | None = None) -> torch.Tensor:
    """Symmetric InfoNCE over a batch of pairs (open_clip ``ClipLoss``).

    Args:
        vision, audio: ``(B, D)`` L2-normalised; row i of each is the same clip.
        logit_scale: the temperature, already exponentiated.
        ranks: with several processes, ``vision`` and ``audio`` are this process's slice
            of a batch of ``rows``; its rows are scored against the whole batch
            (gathered, as open_clip's ``gather_with_grad`` with ``local_loss``).
    Returns:
        the mean of the vision->audio and audio->vision cross-entropies over this
        process's rows.
    """
    rows = vision.shape[0] if rows is None else rows
    every_vision, every_audio = ranks.gather(vision, rows), ranks.gather(audio, rows)
    logits_per_vision = logit_scale * vision @ every_audio.T  # (B, B_all)
    logits_per_audio = logit_scale * audio @ every_vision.T
    labels = ranks.offset(rows) + torch.arange(vision.shape[0], device=vision.device)
    return (F.cross_entropy(logits_per_vision, labels) + F.cross_entropy(logits_per_audio, labels)) / 2


class AlignModel(nn.Module):
    """The two heads and the learnable temperature."""

    def __init__(self, vision_dim: int, audio_dim: int, cfg: AlignConfig):
        super().__init__()
        self.dims = {"vision": vision_dim, "audio": audio_dim}
        self.dim = cfg.dim
        self.heads = nn.ModuleDict({"vision": ProjectionHead(vision_dim, cfg),
                                    "audio": ProjectionHead(audio_dim, cfg)})
        self.logit_scale = nn.Parameter(torch.ones([]) * INIT_LOGIT_SCALE)

    def project(self, x: torch.Tensor, modality: str) -> torch.Tensor:
        """Map ``(B, dims[modality])`` vectors of one sense into the shared space."""
        if modality not in self.heads:
            raise ValueError(f"unknown modality {modality!r}; expected one of {MODALITIES}")
        return self.heads[modality](x)

    def forward(self, vision: torch.Tensor, audio: torch.Tensor, ranks: Ranks = Ranks(),
                rows: int | None = None) -> torch.Tensor:
        """The loss of a batch of pairs (with several processes, this one's slice of ``rows``)."""
        return clip_loss(self.project(vision, "vision"), self.project(audio, "audio"), self.logit_scale.exp(),
                         ranks, rows)

    @torch.no_grad()
    def clamp_logit_scale(self) -> None:
        """After each optimizer step, as open_clip's ``train_one_epoch`` does."""
        self.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
