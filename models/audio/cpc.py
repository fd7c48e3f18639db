"""Contrastive Predictive Coding for audio (van den Oord et al. 2018), after
facebookresearch/CPC_audio (``cpc/model.py``, ``cpc/criterion/criterion.py``).

Read top to bottom: the per-step channel norm, the convolutional encoder over log-mel
frames (z), the GRU context network (c), the K linear predictors, the InfoNCE loss with
its per-step accuracy, and the model that ties them together. Differences from CPC_audio,
each on purpose: the encoder reads 64-bin log-mel frames (10 ms) instead of raw samples,
and the loss is the mean over the K steps (CPC_audio sums them) so that it reads against
the chance level ``ln(1 + n_negatives)`` whatever K is.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from core.config import CpcConfig
from models.distributed import Ranks


class ChannelNorm(nn.Module):
    """Normalise each time step over its channels (CPC_audio's ``ChannelNorm``): ``(B, C, T)``.

    Unlike batch norm it does not mix sequences, so an embedding does not depend on what
    else is in the batch.
    """

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.transpose(1, 2)).transpose(1, 2)


class ConvEncoder(nn.Module):
    """Log-mel frames ``(B, n_mels, F)`` -> encoded steps z ``(B, T, channels)``.

    The first convolution downsamples by ``encoder_stride``; the others keep the length.
    """

    def __init__(self, cfg: CpcConfig):
        super().__init__()
        s, c = cfg.encoder_stride, cfg.encoder_channels
        layers: list[nn.Module] = [nn.Conv1d(cfg.n_mels, c, kernel_size=2 * s, stride=s, padding=s // 2),
                                   ChannelNorm(c), nn.ReLU()]
        for _ in range(cfg.encoder_layers - 1):
            layers += [nn.Conv1d(c, c, kernel_size=3, padding=1), ChannelNorm(c), nn.ReLU()]
        self.net = nn.Sequential(*layers)
        self.stride = s

    def steps(self, frames: int) -> int:
        """Encoded steps that ``frames`` mel frames give."""
        s = self.stride
        return (frames + 2 * (s // 2) - 2 * s) // s + 1

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.net(mel).transpose(1, 2)  # (B, T, C)


def negative_indices(batch: int, steps: int, window: int, n_negatives: int, mode: str,
                     *, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """Where each prediction's negatives come from, as flat indices into ``(batch * steps)``.

    As in CPC_audio's ``sampleClean``, one set of negatives per prediction position is
    shared by all K steps, and its time step is the position plus a random offset in
    ``[1, steps)`` (mod ``steps``), so it is never the context's own step.

    Args:
        batch, steps: the shape of the encoded batch z ``(B, T, D)``.
        window: prediction positions ``T - K``.
        n_negatives: negatives per position.
        mode: ``"batch"`` any sequence of the batch (CPC_audio); ``"other_sequences"``
            never the sequence itself; ``"same_sequence"`` only the sequence itself.
        generator: a seeded generator on ``device`` (for reproducible nights).
    Returns:
        a ``(B, N, W)`` long tensor.
    """
    shape = (batch, n_negatives, window)
    own = torch.arange(batch, device=device).view(batch, 1, 1).expand(shape)
    if mode == "batch":
        seq = torch.randint(0, batch, shape, generator=generator, device=device)
    elif mode == "other_sequences":
        if batch < 2:
            raise ValueError("negatives 'other_sequences' needs a batch of at least 2")
        seq = (own + torch.randint(1, batch, shape, generator=generator, device=device)) % batch
    elif mode == "same_sequence":
        seq = own
    else:
        raise ValueError(f"unknown negatives mode {mode!r}")
    position = torch.arange(window, device=device).view(1, 1, window)
    offset = torch.randint(1, steps, shape, generator=generator, device=device)
    step = (position + offset) % steps
    return seq * steps + step


@dataclass
class CpcOutput:
    """``loss``: mean InfoNCE over the K steps; per-step loss and accuracy: ``(K,)``;
    ``pooled``: the context averaged over time ``(B, H)``, what an embedding is made of
    (set by :meth:`CpcModel.forward`; the trainer distils it against last night's model)."""

    loss: torch.Tensor
    loss_per_step: torch.Tensor
    accuracy_per_step: torch.Tensor
    pooled: torch.Tensor | None = None


def info_nce(context: torch.Tensor, encoded: torch.Tensor, predictors: nn.ModuleList, *,
             n_negatives: int, negatives: str, generator: torch.Generator | None = None,
             ranks: Ranks = Ranks(), rows: int | None = None) -> CpcOutput:
    """The CPC loss: from c_t, tell z_{t+k} apart from negatives, for k = 1..K.

    Args:
        context: c ``(B, T, H)`` from the GRU.
        encoded: z ``(B, T, D)`` from the encoder.
        predictors: K modules ``H -> D`` (W_k in the paper).
        n_negatives, negatives: see :func:`negative_indices`.
        generator: for the negatives.
        ranks: with several processes, ``context`` and ``encoded`` are this process's
            slice of the batch; negatives are drawn from the whole batch (gathered), as
            one process would draw them.
        rows: the whole batch's rows (``B`` in one process).
    Returns:
        a :class:`CpcOutput`. Accuracy at step k is the share of positions where the true
        z_{t+k} scores above every negative (chance: ``1 / (1 + n_negatives)``).
    """
    B, T, D = encoded.shape
    rows = B if rows is None else rows
    K = len(predictors)
    W = T - K
    if W < 1:
        raise ValueError(f"a crop of {T} encoded steps is too short to predict {K} steps ahead")
    c = context[:, :W]                                                              # (B, W, H)
    preds = torch.stack([p(c) for p in predictors], dim=1)                          # (B, K, W, D)
    positives = torch.stack([encoded[:, k:k + W] for k in range(1, K + 1)], dim=1)  # (B, K, W, D)
    # Scores are dot products over D divided by D, as CPC_audio's `.mean(dim=3)`.
    pos = (preds * positives).mean(-1)                                              # (B, K, W)
    everyone = ranks.gather(encoded, rows)                                          # (B_all, T, D)
    idx = negative_indices(rows, T, W, n_negatives, negatives, generator=generator, device=encoded.device)
    idx = ranks.split(idx)                                                          # this slice's rows
    negs = everyone.reshape(-1, D)[idx]                                             # (B, N, W, D)
    neg = torch.einsum("bkwd,bnwd->bknw", preds, negs) / D                          # (B, K, N, W)
    logits = torch.cat([pos.unsqueeze(2), neg], dim=2)                              # (B, K, 1+N, W)
    logits = logits.permute(1, 0, 3, 2).reshape(K, B * W, 1 + n_negatives).float()  # (K, B*W, 1+N)
    target = torch.zeros(K * B * W, dtype=torch.long, device=logits.device)         # the positive is 0
    loss_per_step = F.cross_entropy(logits.reshape(-1, 1 + n_negatives), target,
                                    reduction="none").view(K, B * W).mean(1)
    # Strictly above every negative: a collapsed encoder (all ties) scores 0, not 1 as an
    # argmax that favours index 0 (CPC_audio's) would report.
    accuracy = (logits[..., 0] > logits[..., 1:].max(-1).values).float().mean(1)
    return CpcOutput(loss_per_step.mean(), loss_per_step.detach(), accuracy.detach())


def chance_loss(n_negatives: int) -> float:
    """InfoNCE of a model that cannot tell the positive from its negatives."""
    return math.log(1 + n_negatives)


class CpcModel(nn.Module):
    """Encoder, GRU context network and predictors; ``forward`` returns the loss."""

    def __init__(self, cfg: CpcConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = ConvEncoder(cfg)
        self.context = nn.GRU(cfg.encoder_channels, cfg.context_hidden, batch_first=True)
        self.predictors = nn.ModuleList(
            nn.Linear(cfg.context_hidden, cfg.encoder_channels, bias=False) for _ in range(cfg.predict_steps))

    @property
    def embedding_dim(self) -> int:
        return self.cfg.context_hidden

    def min_frames(self) -> int:
        """Fewest mel frames a training crop may have (K + 1 encoded steps)."""
        frames = 1
        while self.encoder.steps(frames) < self.cfg.predict_steps + 1:
            frames += 1
        return frames

    def encode(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-mel ``(B, n_mels, F)`` -> (z ``(B, T, D)``, c ``(B, T, H)``)."""
        z = self.encoder(mel)
        # The GRU runs in float32: recurrent state in bf16 drifts over long crops, and
        # cuDNN's bf16 RNN support varies between versions.
        with torch.autocast(device_type=z.device.type, enabled=False):
            c, _ = self.context(z.float())
        return z, c

    def forward(self, mel: torch.Tensor, generator: torch.Generator | None = None,
                ranks: Ranks = Ranks(), rows: int | None = None) -> CpcOutput:
        """The loss of a batch (with several processes, this one's slice of ``rows``)."""
        z, c = self.encode(mel)
        out = info_nce(c, z.float(), self.predictors, n_negatives=self.cfg.n_negatives,
                       negatives=self.cfg.negatives, generator=generator, ranks=ranks, rows=rows)
        out.pooled = c.mean(dim=1)  # (B, H), as embed
        return out

    @torch.no_grad()
    def embed(self, mel: torch.Tensor) -> torch.Tensor:
        """Pooled context: the mean of c over time, ``(B, H)`` (the audio embedding)."""
        _, c = self.encode(mel)
        return c.mean(dim=1)
