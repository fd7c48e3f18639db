"""The dream decoder: a diffusion model that draws a frame from its vision embedding.

diffusers' ``UNet2DConditionModel`` predicts the velocity ``v`` (Salimans & Ho 2022) of a
noised frame. The frame's unit embedding, with its noise level (below), conditions it twice,
both through diffusers' own layers: ``class_embed_type="projection"`` maps it to the
timestep embedding's width and adds it there (the ADM way), and the mid block, a
transformer at the lowest resolution, attends to it as one token. Chosen on the round trip
(a dream re-embedded by the vision encoder: is its own clip the nearest?), 2026-12-03, 2-core
CPU, nine FFmpeg scenes (``tests/jepa_media.py``, colours kept), tiny sizes, 300 steps,
108 dreams, two seeds each, top-1 from the frame's own embedding (from a completed glimpse):

- UNet2DModel + an MLP of our own into the timestep embedding (the old way): 0.47 (0.44);
- projection alone (plain mid block): 0.52 (0.47); 0.60 (0.62) at 1000 steps; but four
  solid colours came out wrong: the plain mid block has no self-attention to spread a
  colour over the picture;
- projection + the cross-attention mid block (this): 0.48 (0.45); 0.55 (0.55) at 800 steps;
- cross-attention at every level below the first, + projection: 0.59 (0.52), at 2-4 times
  the CPU time a step, so that in the same time the others run 800-1000 steps.

Top-5 was 0.97-1.00 for all of them (the untrained decoder 0.55-0.57, chance 0.56).

The embedding is noised on the way in, as unCLIP noises its CLIP image embedding
(``noise_level``, Ramesh et al. 2022): during training a random share of Gaussian noise, up
to ``dream.cond_noise``, is mixed into the unit embedding and the level is given to the
network beside it. At dream time the embeddings are completed fragments and blends of two
moments, which lie off the manifold of the frame embeddings the decoder trained on; having
seen noisy embeddings (and knowing how noisy) it treats them as a neighbourhood to draw
from instead of an input it has never met. ``dream.sample_cond_noise`` noises them a
little when dreaming too. (On the FFmpeg scenes neither, nor the EMA, moved the round trip
beyond its noise (BENCHMARKS.md); they are kept for real days, where completed and blended
embeddings may lie further from the frames', not measured yet.)

A zero embedding stands in for the condition on ``cond_dropout`` of the training steps (the
unCLIP convention for the null image embedding), so that sampling can use classifier-free
guidance (Ho & Salimans 2022). Training is DDPM (1000 noise levels, cosine schedule),
dreaming is DDIM (deterministic given the generator, ``sample_steps``). Dreams are drawn
with the EMA of the weights (``dream.ema_decay``; diffusers ``EMAModel``).
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from diffusers.training_utils import EMAModel
from torch import nn

from core.config import DreamConfig
from models.checkpoint import CheckpointError, load_checkpoint
from models.distributed import Ranks

TRAIN_TIMESTEPS = 1000
# Keys of DreamConfig that fix the shape of the weights.
ARCH_KEYS = ("image_size", "channels", "layers_per_block", "attention")
# How the embedding enters the UNet, recorded in every checkpoint: one written before it was
# recorded ("identity-mlp": UNet2DModel plus an MLP of our own) starts the decoder afresh.
CONDITIONING = "projection+mid-cross-attention"
OLD_CONDITIONING = "identity-mlp"


def noise_scheduler() -> DDPMScheduler:
    # v-prediction (Salimans & Ho 2022): with few training steps, noise prediction denoised
    # single steps well but sampled wrong colours from pure noise; v stays well-scaled at
    # every noise level.
    return DDPMScheduler(num_train_timesteps=TRAIN_TIMESTEPS, beta_schedule="squaredcos_cap_v2",
                         prediction_type="v_prediction")


def noise_condition(cond: torch.Tensor, level: torch.Tensor, generator: torch.Generator | None,
                    noise: torch.Tensor | None = None) -> torch.Tensor:
    """Unit embeddings moved towards Gaussian noise: ``normalize(sqrt(1 - l^2) e + l z / sqrt(D))``.

    ``z / sqrt(D)`` is about unit length and about orthogonal to ``e``, so ``l`` is the sine of
    the angle the embedding turns by (0: as it is, 1: noise alone).

    Args:
        cond: ``(N, D)`` embeddings (any length; they are normalised first).
        level: ``(N,)`` levels in [0, 1].
        generator: a CPU generator for the noise.
        noise: ``(N, D)`` standard normal noise already drawn (instead of ``generator``).
    """
    e = F.normalize(cond.float(), dim=-1)
    if noise is None:
        noise = torch.randn(e.shape, generator=generator)
    z = noise.to(e.device) / e.shape[-1] ** 0.5
    level = level.to(e.device, torch.float32)[:, None]
    return F.normalize((1 - level ** 2).sqrt() * e + level * z, dim=-1)


class DreamDecoder(nn.Module):
    """The UNet, conditioned on a unit embedding and its noise level.

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
        # class_embed_type="projection": diffusers' own MLP maps the condition (embedding and
        # noise level) to the timestep embedding's width and adds it there (the ADM way). The
        # cross-attention mid block attends to it as one token, and brings the self-attention
        # at the lowest resolution that the plain mid block lacks (without it, solid colours
        # came out wrong: tests/test_dream.py).
        self.unet = UNet2DConditionModel(
            sample_size=cfg.image_size, in_channels=3, out_channels=3, layers_per_block=cfg.layers_per_block,
            block_out_channels=tuple(cfg.channels), down_block_types=tuple(down), up_block_types=tuple(up),
            mid_block_type="UNetMidBlock2DCrossAttn", cross_attention_dim=cond_dim + 1, attention_head_dim=8,
            norm_num_groups=8, class_embed_type="projection", projection_class_embeddings_input_dim=cond_dim + 1)
        self.cond_dim, self.image_size = cond_dim, cfg.image_size

    def condition(self, cond: torch.Tensor | None, level: torch.Tensor | None = None,
                  drop: torch.Tensor | None = None, batch: int | None = None) -> torch.Tensor:
        """``(B, D + 1)``: unit embeddings and their noise level, zeros where ``drop`` is true
        (everywhere when ``cond`` is ``None``: ``batch`` rows)."""
        device = next(self.parameters()).device
        if cond is None:
            return torch.zeros(batch, self.cond_dim + 1, device=device)
        level = torch.zeros(len(cond), device=device) if level is None else level.to(device)
        c = torch.cat([F.normalize(cond.float().to(device), dim=-1), level[:, None].float()], dim=1)
        return c if drop is None else torch.where(drop[:, None].to(device), torch.zeros_like(c), c)

    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """Predicted velocity of ``noisy`` (``(B, 3, S, S)`` in [-1, 1]) at ``timesteps``, given
        ``condition`` (``(B, D + 1)``, from :meth:`condition`)."""
        condition = condition.to(noisy.dtype)
        return self.unet(noisy, timesteps, encoder_hidden_states=condition[:, None], class_labels=condition).sample


def diffusion_loss(model: DreamDecoder, images: torch.Tensor, cond: torch.Tensor, scheduler: DDPMScheduler,
                   cfg: DreamConfig, generator: torch.Generator, ranks: Ranks = Ranks(),
                   rows: int | None = None) -> torch.Tensor:
    """DDPM loss (v-prediction) of a batch of uint8 frames and their embeddings, the
    embeddings noised up to ``cfg.cond_noise`` and dropped on ``cfg.cond_dropout`` of rows.

    With several processes (``ranks``), ``images`` and ``cond`` are this process's slice of
    a batch of ``rows``: the noise is drawn for the whole batch and sliced, so every row
    gets the noise it would get in one process.
    """
    x0 = images.float() / 127.5 - 1
    device = x0.device
    rows = x0.shape[0] if rows is None else rows
    noise = ranks.split(torch.randn((rows, *x0.shape[1:]), generator=generator)).to(device)
    t = ranks.split(torch.randint(0, TRAIN_TIMESTEPS, (rows,), generator=generator)).to(device)
    drop = ranks.split(torch.rand(rows, generator=generator) < cfg.cond_dropout)
    level = ranks.split(torch.rand(rows, generator=generator) * cfg.cond_noise)
    cond_noise = ranks.split(torch.randn((rows, cond.shape[-1]), generator=generator))
    condition = model.condition(noise_condition(cond, level, None, cond_noise), level, drop)
    noisy = scheduler.add_noise(x0, noise, t)
    target = scheduler.get_velocity(x0, noise, t)
    return F.mse_loss(model(noisy, t, condition).float(), target)


@torch.no_grad()
def dream(model: DreamDecoder, cond: torch.Tensor | None, *, steps: int, guidance: float,
          generator: torch.Generator, batch: int | None = None, cond_noise: float = 0.0) -> torch.Tensor:
    """Decode embeddings into ``(N, 3, S, S)`` uint8 images (DDIM, classifier-free guidance).

    Args:
        model: a decoder, best with its EMA weights (:func:`ema_decoder`, :func:`load_decoder`).
        cond: ``(N, D)`` embeddings (any length, any device), or ``None`` for ``batch``
            unconditional samples (the null condition only).
        steps: DDIM steps.
        guidance: 0 = the null condition's prediction, 1 = the condition's, more = past it.
        generator: a CPU generator for the starting noise and the embeddings' noise (the
            rest is deterministic).
        batch: how many unconditional samples, when ``cond`` is ``None``.
        cond_noise: the level of noise mixed into the embeddings first (:func:`noise_condition`).
    Returns:
        ``(N, 3, S, S)`` uint8 images on the model's device.
    """
    # 1. Check inputs
    if cond is None and not batch:
        raise ValueError(f"batch={batch!r}: unconditional dreams need how many to draw")
    if cond is not None and (cond.ndim != 2 or cond.shape[1] != model.cond_dim):
        raise ValueError(f"cond of shape {tuple(cond.shape)}: expected (N, {model.cond_dim})")
    model.eval()
    device = next(model.parameters()).device
    n = batch if cond is None else cond.shape[0]
    # 2. Conditions: the null one, and the (noised) embeddings
    unconditional = model.condition(None, batch=n)
    conditional = unconditional
    if cond is not None:
        level = torch.full((n,), float(cond_noise))
        conditional = model.condition(noise_condition(cond, level, generator) if cond_noise else cond, level)
    # 3. Starting noise and the DDIM steps
    scheduler = DDIMScheduler.from_config(noise_scheduler().config)
    scheduler.set_timesteps(steps)
    x = torch.randn((n, 3, model.image_size, model.image_size), generator=generator).to(device)
    # 4. Denoise, guided away from the null condition's prediction
    for t in scheduler.timesteps:
        timestep = torch.full((n,), int(t), device=device, dtype=torch.long)
        v_u = model(x, timestep, unconditional)
        v = v_u if cond is None else v_u + guidance * (model(x, timestep, conditional) - v_u)
        x = scheduler.step(v, t, x).prev_sample
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def make_ema(model: DreamDecoder, decay: float, state: dict | None = None, step: int = 0) -> EMAModel:
    """The EMA of ``model``'s weights: from a saved ``state`` when given, else from the weights
    as they are at global ``step`` (a checkpoint written before the EMA existed resumes this
    way, its weights already trained, so the EMA's warm-up is not run again)."""
    # foreach: one fused update per step (and one deepspeed check instead of one per tensor).
    ema = EMAModel(model.parameters(), decay=decay, foreach=True)
    ema.optimization_step = step
    if state is not None:
        ema.load_state_dict(state)
        ema.to(next(model.parameters()).device)
        ema.decay = decay  # tonight's config, not the one saved
    return ema


def ema_decoder(model: DreamDecoder, ema: EMAModel) -> DreamDecoder:
    """A copy of ``model`` holding the EMA weights, in eval mode (``model`` is left as it is)."""
    averaged = copy.deepcopy(model)
    ema.copy_to(averaged.parameters())
    return averaged.eval()


def load_decoder(checkpoint: Path, device: str) -> tuple[DreamDecoder, dict]:
    """The decoder a night saved, with its EMA weights, for dreaming on demand.

    Args:
        checkpoint: ``checkpoints/dream/{date}.pt``.
        device: where the decoder goes (``"cpu"``, ``"cuda"``).
    Returns:
        ``(decoder, meta)``: the decoder in eval mode, and ``meta`` with ``input_version``
        (the ``jepa@{date}`` vectors it decodes), ``config`` (a :class:`DreamConfig`: sampling
        steps, guidance, ``sample_cond_noise``), ``cond_dim``, ``step``, ``date`` and
        ``model_version``.
    Raises:
        CheckpointError: unreadable, another conditioning, or weights that do not load.
    """
    state = load_checkpoint(Path(checkpoint), ("model", "config", "cond_dim", "input_version"))
    if state.get("conditioning", OLD_CONDITIONING) != CONDITIONING:
        raise CheckpointError(f"{checkpoint}: a decoder conditioned by {state.get('conditioning', OLD_CONDITIONING)}, "
                              f"which this version no longer reads; run a night to train a {CONDITIONING} one")
    cfg = DreamConfig.model_validate(state["config"])
    model = DreamDecoder(int(state["cond_dim"]), cfg)
    try:
        model.load_state_dict(state["model"])
        if "ema" in state:
            make_ema(model, cfg.ema_decay, state["ema"]).copy_to(model.parameters())
    except (KeyError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"{checkpoint}: the decoder does not load ({type(exc).__name__}: {exc})") from None
    meta = {k: state.get(k) for k in ("input_version", "cond_dim", "step", "date", "model_version")}
    return model.to(device).eval(), {**meta, "config": cfg}
