"""Reconstructors: complete the embedding of a fragment of a moment into its clip's embedding.

A fragment is the embedding of a damaged view of a frame (:mod:`models.fragments`: a small
crop, a grey block, a blur), what a glimpse or a vague memory of a moment looks like next
to the whole clip. Two networks, trained to bring it back to its clip's embedding:

- :class:`MLPReconstructor`: an MLP from fragment to clip; it needs nothing but its weights.
- :class:`HopfieldReconstructor`: a modern Hopfield network (Ramsauer et al. 2020, the
  ``Hopfield`` association of ml-jku/hopfield-layers): the fragment is the state pattern,
  the night's clip embeddings are the stored patterns, and one update
  ``softmax(beta * q(fragment) . k(memories)) @ memories`` retrieves. Its values are the
  memories themselves, so a completion is always a blend of real moments.

Both see their inputs standardised per dimension with the statistics of the night they were
trained on (fragments and memories separately): the embeddings share a large common
direction and a few loud dimensions, and what tells moments apart lies in the quiet ones
(measured: a linear probe on standardised fragment embeddings found the clip of 0.61 of
held-out fragments where plain cosine found 0.37).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def completion_loss(completed: torch.Tensor, clean: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    """``1 - cosine`` to the clean vector, measured around ``center`` (the memories' mean).

    Around their mean the loss sees only what tells memories apart, which is also all that
    ranks them in a cosine search over unit vectors (``q . (mean + d_i)`` orders the
    memories by ``q . d_i``).
    """
    return (1 - F.cosine_similarity(completed - center, clean - center, dim=-1)).mean()


class _Standardised(nn.Module):
    """Per-dimension mean and spread of the fragments and of the memories (set by the trainer)."""

    def __init__(self, dim: int):
        super().__init__()
        for name in ("fragment_mean", "memory_mean"):
            self.register_buffer(name, torch.zeros(dim))
        for name in ("fragment_std", "memory_std"):
            self.register_buffer(name, torch.ones(dim))

    @torch.no_grad()
    def set_statistics(self, fragments: torch.Tensor, memories: torch.Tensor) -> None:
        for prefix, x in (("fragment", fragments), ("memory", memories)):
            getattr(self, f"{prefix}_mean").copy_(x.mean(dim=0))
            getattr(self, f"{prefix}_std").copy_(x.std(dim=0).clamp_min(1e-6) if len(x) > 1 else torch.ones_like(x[0]))

    def standard_fragments(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.fragment_mean) / self.fragment_std

    def standard_memories(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.memory_mean) / self.memory_std


class MLPReconstructor(_Standardised):
    """``memory_mean + memory_std * MLP(standardised fragment)``: three linear layers with GELU,
    the last zero-initialised so that training starts from the memories' mean."""

    def __init__(self, dim: int, hidden: int):
        super().__init__(dim)
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, dim))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, fragments: torch.Tensor, bank: torch.Tensor | None = None) -> torch.Tensor:
        del bank  # the MLP remembers through its weights only
        return self.memory_mean + self.memory_std * self.net(self.standard_fragments(fragments))

    def loss(self, fragments: torch.Tensor, bank: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Centred cosine, plus the squared error in units of the memories' spread: a cosine
        search ranks memories by the completion's common part too, so that must match as well."""
        completed, clean = self(fragments), bank[targets]
        spread = ((completed - clean) / self.memory_std).pow(2).mean()
        return completion_loss(completed, clean, self.memory_mean) + spread


class HopfieldReconstructor(_Standardised):
    """One retrieval step of a modern Hopfield network with learned query and key maps.

    Args:
        dim: width of the vectors.
        assoc_dim: width of the space where fragment and memories are compared.
        beta: starting inverse temperature (learned, as a log, kept positive).
    """

    def __init__(self, dim: int, assoc_dim: int, beta: float):
        super().__init__(dim)
        self.query = nn.Linear(dim, assoc_dim)
        self.key = nn.Linear(dim, assoc_dim)
        with torch.no_grad():  # start as plain cosine association in a random subspace
            self.key.weight.copy_(self.query.weight)
            self.key.bias.copy_(self.query.bias)
        self.log_beta = nn.Parameter(torch.tensor(math.log(beta)))

    @property
    def beta(self) -> torch.Tensor:
        return self.log_beta.exp()

    def logits(self, fragments: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
        """``(B, M)``: beta x cosine between each fragment's query and each stored pattern's key."""
        q = F.normalize(self.query(self.standard_fragments(fragments)), dim=-1)
        k = F.normalize(self.key(self.standard_memories(bank)), dim=-1)
        return self.beta * q @ k.t()

    def forward(self, fragments: torch.Tensor, bank: torch.Tensor | None = None) -> torch.Tensor:
        if bank is None:
            raise ValueError("the Hopfield reconstructor needs the stored patterns (bank)")
        return torch.softmax(self.logits(fragments, bank), dim=-1) @ bank

    def loss(self, fragments: torch.Tensor, bank: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Completion loss plus the cross-entropy of recalling the fragment's own memory
        (``targets``: its row in ``bank``): the second term sharpens ``beta`` and the keys so
        that a fragment recalls its moment rather than a blend of similar ones."""
        logits = self.logits(fragments, bank)
        completed = torch.softmax(logits, dim=-1) @ bank
        return completion_loss(completed, bank[targets], self.memory_mean) + F.cross_entropy(logits, targets)


def build(variant: str, dim: int, cfg) -> nn.Module:
    """The named variant sized by the ``models.reconstruct`` config."""
    if variant == "mlp":
        return MLPReconstructor(dim, cfg.hidden)
    if variant == "hopfield":
        return HopfieldReconstructor(dim, cfg.assoc_dim, cfg.beta)
    raise ValueError(f"unknown reconstructor {variant!r}; expected mlp or hopfield")
