"""Sparse autoencoders: the network and its loss, in three kinds that share one dictionary.

    latents = sparsify(W_enc (x - b_pre) + b_lat)        # non-negative, mostly zero
    recons  = W_dec latents + b_pre                      # W_dec columns kept at unit norm

``kind`` picks ``sparsify``:

- ``topk`` (Gao et al. 2024, openai/sparse_autoencoder): ReLU of the ``k`` largest
  pre-activations of each vector; exactly ``k`` (at most) neurons active per vector.
- ``batchtopk`` (Bussmann, Leask, Nanda 2024): in training, ReLU of the ``k * B`` largest
  pre-activations of the whole batch, so a vector may use more or fewer than ``k``; a
  running threshold (the EMA of the smallest kept activation) replaces the batch at
  inference, a JumpReLU that keeps ``k`` per vector on average.
- ``l1``: plain ReLU; sparsity comes from an L1 penalty on the activations (weighted by the
  decoder norms, which are 1 here), which the trainer adds with ``l1_coef``.

Each neuron is one dictionary direction; the moments that make it fire are its memory
trace. The AuxK loss asks the ``aux_k`` most active *dead* neurons (silent for
``dead_steps`` steps) to explain what the live ones left over, which brings them back to life.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from models.distributed import Ranks

Kind = Literal["topk", "batchtopk", "l1"]
KINDS: tuple[str, ...] = ("topk", "batchtopk", "l1")


class SparseAutoencoder(nn.Module):
    """Sparse autoencoder with a pre-encoder bias, tied initialisation and a unit-norm decoder.

    Args:
        n_inputs: width of the vectors it encodes.
        n_latents: neurons in the dictionary.
        k: neurons active per vector (topk), or on average per vector (batchtopk); unused by l1.
        aux_k: dead neurons used by the AuxK loss (0 = no AuxK).
        dead_steps: training steps without firing after which a neuron counts as dead.
        kind: ``topk``, ``batchtopk`` or ``l1`` (see the module docstring).
        threshold_momentum: batchtopk only; the EMA momentum of the inference threshold.
    """

    def __init__(self, n_inputs: int, n_latents: int, k: int, aux_k: int = 0, dead_steps: int = 100,
                 kind: Kind = "topk", threshold_momentum: float = 0.99):
        super().__init__()
        if not 1 <= k <= n_latents:
            raise ValueError(f"k must be in [1, {n_latents}], got {k}")
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
        self.n_inputs, self.n_latents, self.k, self.aux_k = n_inputs, n_latents, k, aux_k
        self.dead_steps, self.kind, self.threshold_momentum = dead_steps, kind, threshold_momentum
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
        if kind == "batchtopk":
            # The inference threshold; 0 until the first training batch sets it (then ReLU).
            self.register_buffer("threshold", torch.zeros(()))

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

    def _batch_topk(self, pre: torch.Tensor) -> torch.Tensor:
        """ReLU of the ``k * B`` largest pre-activations of the whole ``(B, n_latents)`` batch."""
        flat = F.relu(pre).flatten()
        values, indices = flat.topk(min(self.k * len(pre), flat.numel()))
        return torch.zeros_like(flat).scatter(0, indices, values).view_as(pre)

    @torch.no_grad()
    def _update_threshold_(self, latents: torch.Tensor, ranks: Ranks) -> None:
        kept = latents[latents > 0]
        smallest = ranks.min(kept.min() if kept.numel() else latents.new_tensor(float("inf")))
        if not torch.isfinite(smallest):
            return
        if float(self.threshold) == 0:  # the first batch: no estimate to average with yet
            self.threshold.copy_(smallest)
        else:
            self.threshold.lerp_(smallest, 1 - self.threshold_momentum)

    def _sparsify(self, pre: torch.Tensor) -> torch.Tensor:
        """The latents of a batch of pre-activations, by ``kind`` and mode (train or eval)."""
        if self.kind == "topk":
            return self._topk(pre, self.k)
        if self.kind == "l1":
            return F.relu(pre)
        return self._batch_topk(pre) if self.training else self._jump_relu(pre)

    def _jump_relu(self, pre: torch.Tensor) -> torch.Tensor:
        return pre * (pre > self.threshold)  # the threshold is >= 0, so this is a ReLU too

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, n_inputs) -> (B, n_latents)`` non-negative activations.

        topk: at most ``k`` non-zero per row. batchtopk: outside training, those above the
        learnt threshold (about ``k`` per row on average), so a row's code does not depend
        on the rest of its batch. l1: every positive pre-activation.
        """
        pre = self.pre_activations(x)
        return self._jump_relu(pre) if self.kind == "batchtopk" else self._sparsify(pre)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.decoder(latents) + self.pre_bias

    def dead_mask(self) -> torch.Tensor:
        return self.steps_since_fired >= self.dead_steps

    def forward(self, x: torch.Tensor, ranks: Ranks = Ranks(),
                rows: int | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The losses of a batch; the trainer minimises ``mse + aux_coef * aux + l1_coef * l1``.

        In training mode this also counts, per neuron, the steps since it last fired, and
        (batchtopk) moves the inference threshold towards the batch's smallest kept activation.

        Returns:
            ``(mse, parts)``: ``mse`` is the reconstruction error over the batch's variance
            (differentiable); ``parts`` holds ``aux`` (the AuxK loss, differentiable, 0 when
            no neuron is dead or AuxK is off), ``l1`` (the activations' L1 norm weighted by the
            decoder norms, over the batch's RMS deviation so its weight does not depend on the
            data's scale; differentiable, 0 unless ``kind`` is l1) and the batch's ``latents``
            (detached).

        With several processes (``ranks``), ``x`` is this process's slice of a batch of
        ``rows``: the losses are the slice's rows over the whole batch's variance, and the
        firing counts and the threshold follow the whole batch, so every process keeps the
        same buffers. (batchtopk's top ``k x B`` is taken within the slice.)
        """
        rows = len(x) if rows is None else rows
        pre = self.pre_activations(x)
        latents = self._sparsify(pre)
        recons = self.decode(latents)
        # The batch's variance (the data's, a constant of the step), over every slice.
        centre = ranks.sum(x.sum(0)) / rows
        variance = (ranks.sum((x - centre).pow(2).sum()) / rows).clamp_min(1e-8)
        mse = (recons - x).pow(2).sum(-1).mean() / variance
        l1 = x.new_zeros(())
        if self.kind == "l1":
            l1 = (latents * self.decoder.weight.norm(dim=0)).sum(-1).mean() / variance.sqrt()

        if self.training:
            with torch.no_grad():
                fired = ranks.any((latents > 0).any(0))
                self.steps_since_fired.add_(1).masked_fill_(fired, 0)
                if self.kind == "batchtopk":
                    self._update_threshold_(latents, ranks)
        aux = x.new_zeros(())
        dead = self.dead_mask()
        if self.aux_k and self.training and bool(dead.any()):
            # The dead neurons' own top activations reconstruct the residual the live ones left.
            k = min(self.aux_k, int(dead.sum()))
            aux_latents = self._topk(pre.masked_fill(~dead, float("-inf")), k)
            residual = (x - recons).detach()
            aux_recons = self.decoder(aux_latents)
            aux = ((aux_recons - residual).pow(2).sum(-1).mean()
                   / (ranks.sum(residual.pow(2).sum()) / rows).clamp_min(1e-8))
        return mse, {"aux": aux, "l1": l1, "latents": latents.detach()}


def fraction_of_variance_unexplained(model: SparseAutoencoder, x: torch.Tensor) -> float:
    """``|x - recons|^2 / |x - mean(x)|^2`` over a set of vectors (0 = perfect)."""
    with torch.no_grad():
        recons = model.decode(model.encode(x))
        total = (x - x.mean(0)).pow(2).sum()
        return float((recons - x).pow(2).sum() / total.clamp_min(1e-12))
