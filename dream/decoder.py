"""The dream decoder: a diffusion model that draws a frame from its vision embedding.

diffusers' ``UNet2DModel`` predicts the noise of a noised frame; the frame's embedding,
mapped by a small MLP to the width of the timestep embedding, is added to it
(``class_embed_type="identity"``, the ADM way of conditioning on a class); it predicts the
velocity ``v`` (Salimans & Ho 2022) rather than the noise. A learned
``null`` embedding stands in for the condition on ``cond_dropout`` of the training steps,
so that sampling can use classifier-free guidance (Ho & Salimans 2022). Training is DDPM
(1000 noise levels, cosine schedule), dreaming is DDIM (deterministic, ``sample_steps``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
from torch import nn

from core.config import DreamConfig

TRAIN_TIMESTEPS = 1000
# Keys of DreamConfig that fix the shape of the weights.
ARCH_KEYS = ("image_size", "channels", "layers_per_block", "attention")


def noise_scheduler() -> DDPMScheduler:
    # v-prediction (Salimans & Ho 2022): with few training steps, noise prediction denoised
    # single steps well but sampled wrong colours from pure noise; v stays well-scaled at
    # every noise level.
    return DDPMScheduler(num_train_timesteps=TRAIN_TIMESTEPS, beta_schedule="squaredcos_cap_v2",
                         prediction_type="v_prediction")


class DreamDecoder(nn.Module):
    """UNet + condition MLP + the null condition.

    Args:
        cond_dim: width of the vision embeddings it is conditioned on.
        cfg: the ``dream`` config (sizes).
    """

    def __init__(self, cond_dim: int, cfg: DreamConfig):
        super().__init__()
        levels = len(cfg.channels)
        down, up = ["DownBlock2D"] * levels, ["UpBlock2D"] * levels
        if cfg.attention:
            down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
        self.unet = UNet2DModel(sample_size=cfg.image_size, in_channels=3, out_channels=3,
                                layers_per_block=cfg.layers_per_block, block_out_channels=tuple(cfg.channels),
                                down_block_types=tuple(down), up_block_types=tuple(up),
                                class_embed_type="identity", norm_num_groups=8)
        width = cfg.channels[0] * 4  # UNet2DModel's timestep-embedding width
        self.cond = nn.Sequential(nn.Linear(cond_dim, width), nn.SiLU(), nn.Linear(width, width))
        self.null = nn.Parameter(torch.zeros(width))
        self.cond_dim, self.image_size = cond_dim, cfg.image_size

    def embed(self, cond: torch.Tensor | None, drop: torch.Tensor | None = None, batch: int | None = None) -> torch.Tensor:
        """The condition added to the timestep embedding: ``cond`` mapped, or ``null`` where
        ``drop`` is true (or everywhere when ``cond`` is ``None``: ``batch`` rows)."""
        if cond is None:
            return self.null.expand(batch, -1)
        e = self.cond(F.normalize(cond.float(), dim=-1))
        return e if drop is None else torch.where(drop[:, None], self.null.expand_as(e), e)

    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """Predicted velocity of ``noisy`` (``(B, 3, S, S)`` in [-1, 1]) at ``timesteps``."""
        return self.unet(noisy, timesteps, class_labels=condition.to(noisy.dtype)).sample


def diffusion_loss(model: DreamDecoder, images: torch.Tensor, cond: torch.Tensor, scheduler: DDPMScheduler,
                   cond_dropout: float, generator: torch.Generator) -> torch.Tensor:
    """DDPM loss (v-prediction) of a batch of uint8 frames and their embeddings."""
    x0 = images.float() / 127.5 - 1
    B, device = x0.shape[0], x0.device
    noise = torch.randn(x0.shape, generator=generator).to(device)
    t = torch.randint(0, TRAIN_TIMESTEPS, (B,), generator=generator).to(device)
    drop = (torch.rand(B, generator=generator) < cond_dropout).to(device)
    noisy = scheduler.add_noise(x0, noise, t)
    target = scheduler.get_velocity(x0, noise, t)
    return F.mse_loss(model(noisy, t, model.embed(cond, drop)).float(), target)


@torch.no_grad()
def dream(model: DreamDecoder, cond: torch.Tensor | None, *, steps: int, guidance: float,
          generator: torch.Generator, batch: int | None = None) -> torch.Tensor:
    """Decode embeddings into ``(N, 3, S, S)`` uint8 images (DDIM, classifier-free guidance).

    Args:
        cond: ``(N, D)`` embeddings on the model's device, or ``None`` for ``batch``
            unconditional samples (the null condition only).
        steps: DDIM steps.
        guidance: 0 = the null condition's prediction, 1 = the condition's, more = past it.
        generator: a CPU generator for the starting noise (the rest is deterministic).
    """
    model.eval()
    device = next(model.parameters()).device
    n = batch if cond is None else cond.shape[0]
    scheduler = DDIMScheduler.from_config(noise_scheduler().config)
    scheduler.set_timesteps(steps)
    x = torch.randn((n, 3, model.image_size, model.image_size), generator=generator).to(device)
    unconditional = model.embed(None, batch=n)
    conditional = unconditional if cond is None else model.embed(cond)
    for t in scheduler.timesteps:
        timestep = torch.full((n,), int(t), device=device, dtype=torch.long)
        v_u = model(x, timestep, unconditional)
        v = v_u if cond is None else v_u + guidance * (model(x, timestep, conditional) - v_u)
        x = scheduler.step(v, t, x).prev_sample
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
