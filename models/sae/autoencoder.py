"""TopK sparse autoencoder: the network and its loss (Gao et al. 2024, openai/sparse_autoencoder).

    latents = relu(topk(W_enc (x - b_pre) + b_lat))      # k of n neurons non-zero
    recons  = W_dec latents + b_pre                      # W_dec columns kept at unit norm

Each neuron is one dictionary direction; the moments that make it fire are its memory
trace. TopK fixes the number of active neurons per vector (no L1 penalty to tune), and the
AuxK loss asks the ``aux_k`` most active *dead* neurons (silent for ``dead_steps`` steps)
to explain what the live ones left over, which brings them back to life.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SparseAutoencoder(nn.Module):
    """TopK autoencoder with a pre-encoder bias, tied initialisation and a unit-norm decoder.

    Args:
        n_inputs: width of the vectors it encodes.
        n_latents: neurons in the dictionary.
        k: neurons active per vector.
        aux_k: dead neurons used by the AuxK loss (0 = no AuxK).
        dead_steps: training steps without firing after which a neuron counts as dead.
    """

    def __init__(self, n_inputs: int, n_latents: int, k: int, aux_k: int = 0, dead_steps: int = 100):
        super().__init__()
        if not 1 <= k <= n_latents:
            raise ValueError(f"k must be in [1, {n_latents}], got {k}")
        self.n_inputs, self.n_latents, self.k, self.aux_k = n_inputs, n_latents, k, aux_k
        self.dead_steps = dead_steps
        self.pre_bias = nn.Parameter(torch.zeros(n_inputs))
        self.latent_bias = nn.Parameter(torch.zeros(n_latents))
        self.encoder = nn.Linear(n_inputs, n_latents, bias=False)
        self.decoder = nn.Linear(n_latents, n_inputs, bias=False)
        # Tied initialisation: the decoder starts as the encoder's transpose, unit columns.
        with torch.no_grad():
            self.decoder.weight.copy_(self.encoder.weight.t())
        self.normalise_decoder_()
        # Steps since each neuron last fired; a buffer so checkpoints carry it.
        self.register_buffer("steps_since_fired", torch.zeros(n_latents, dtype=torch.long))

    @torch.no_grad()
    def normalise_decoder_(self) -> None:
        """Unit-norm decoder columns, so a latent's size is its activation alone."""
        self.decoder.weight /= self.decoder.weight.norm(dim=0, keepdim=True).clamp_min(1e-8)

    @torch.no_grad()
    def remove_parallel_decoder_grad_(self) -> None:
        """Drop the part of each column's gradient along the column (it only changes the norm,
        which :meth:`normalise_decoder_` undoes)."""
        w, g = self.decoder.weight, self.decoder.weight.grad
        if g is not None:
            g -= w * (w * g).sum(dim=0, keepdim=True)

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x - self.pre_bias) + self.latent_bias

    def _topk(self, pre: torch.Tensor, k: int) -> torch.Tensor:
        values, indices = pre.topk(k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, indices, F.relu(values))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, n_inputs) -> (B, n_latents)`` with at most ``k`` non-zero (non-negative) entries."""
        return self._topk(self.pre_activations(x), self.k)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.decoder(latents) + self.pre_bias

    def dead_mask(self) -> torch.Tensor:
        return self.steps_since_fired >= self.dead_steps

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The two losses of a batch; the trainer minimises ``mse + aux_coef * aux``.

        In training mode this also counts, per neuron, the steps since it last fired.

        Returns:
            ``(mse, parts)``: ``mse`` is the reconstruction error over the batch's variance
            (differentiable); ``parts`` holds ``aux`` (the AuxK loss, differentiable, 0 when
            no neuron is dead or AuxK is off) and the batch's ``latents`` (detached).
        """
        pre = self.pre_activations(x)
        latents = self._topk(pre, self.k)
        recons = self.decode(latents)
        variance = (x - x.mean(0)).pow(2).sum(-1).mean().clamp_min(1e-8)
        mse = (recons - x).pow(2).sum(-1).mean() / variance

        if self.training:
            with torch.no_grad():
                fired = (latents > 0).any(0)
                self.steps_since_fired.add_(1).masked_fill_(fired, 0)
        aux = x.new_zeros(())
        dead = self.dead_mask()
        if self.aux_k and self.training and bool(dead.any()):
            # The dead neurons' own top activations reconstruct the residual the live ones left.
            k = min(self.aux_k, int(dead.sum()))
            aux_latents = self._topk(pre.masked_fill(~dead, float("-inf")), k)
            residual = (x - recons).detach()
            aux_recons = self.decoder(aux_latents)
            aux = ((aux_recons - residual).pow(2).sum(-1).mean()
                   / residual.pow(2).sum(-1).mean().clamp_min(1e-8))
        return mse, {"aux": aux, "latents": latents.detach()}


def fraction_of_variance_unexplained(model: SparseAutoencoder, x: torch.Tensor) -> float:
    """``|x - recons|^2 / |x - mean(x)|^2`` over a set of vectors (0 = perfect)."""
    with torch.no_grad():
        recons = model.decode(model.encode(x))
        total = (x - x.mean(0)).pow(2).sum()
        return float((recons - x).pow(2).sum() / total.clamp_min(1e-12))
