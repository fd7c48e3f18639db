"""Reconstructors: complete the embedding of a fragment of a moment so it finds its clip.

A fragment is the embedding of a damaged view of a frame (:mod:`models.reconstruct.fragments`:
a small crop, a grey block, a blur, or noise in embedding space), what a glimpse or a vague
memory of a moment looks like next to the whole clip. Three networks learn to bring it back:

- :class:`MLPReconstructor`: an MLP from fragment to the clean embedding of the frame it
  came from; it needs nothing but its weights.
- :class:`HopfieldReconstructor`: a modern Hopfield network (Ramsauer et al. 2020, the
  ``Hopfield`` association of ml-jku/hopfield-layers): the fragment is the state pattern,
  the stored clip embeddings are the memories, and one update
  ``softmax(beta * q(fragment) . k(memories)) @ memories`` retrieves. Its values are the
  memories themselves, so a completion is always a blend of real moments. At query time
  the softmax runs over the ``top_k`` nearest keys only (:class:`HopfieldRecall`, a FAISS
  search), which is what lets it hold a million stored patterns.
- :class:`PatternReconstructor`: the seed's second variant, ``HopfieldLayer`` of
  ml-jku/hopfield-layers: the stored patterns are learned (keys and values are parameters,
  ``patterns`` of them), not the night's clips; for comparison.

Every variant is trained with two terms (:meth:`loss`): the cosine to the clean target
(measured around the memories' mean) and the cross-entropy of *recalling* the fragment's own
clip among all stored clips (:func:`recall_logits`, which ranks the clips exactly as the
cosine search of ``query --fragment`` does). The first alone made completions that were
close to their clip on average but ranked it worse than the fragment as it was (measured on
a held-out day: 0.13 as it is, 0.02 after the MLP); the second trains the ranking itself.

A fragment is described by more than its mean-pooled embedding: beside that vector (the
first ``dim`` columns, what a search compares) come the encoder's patch tokens averaged over
a ``fragment_grid`` x ``fragment_grid`` layout of the picture (:func:`models.vision.embed.embed_fragments`),
where a quarter crop keeps what lies where. Measured on the demo day with configs/cpu.yaml
(offline, the same Hopfield query on 8,400 damaged views, 420 new quarter crops): 25 %-crop
R@1 0.88 from the mean alone, 0.93 with a 2 x 2 layout, 0.94 with 4 x 4 (grey blocks 0.92 ->
0.995). Inputs without a layout (noise in embedding space, a stored clip vector) have those
columns missing (``NaN``, or absent): they count as average after standardising.

All see their inputs standardised per dimension with the statistics of the night they were
trained on (fragments and memories separately): the embeddings share a large common
direction and a few loud dimensions, and what tells moments apart lies in the quiet ones.
"""
from __future__ import annotations

import math

import numpy as np
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


def recall_logits(completed: torch.Tensor, bank: torch.Tensor, center: torch.Tensor, scale: torch.Tensor
                  ) -> torch.Tensor:
    """``(B, M)``: ``scale * unit(completed) . (memory - center)``.

    For unit memories this orders them exactly as a cosine search does (the ``center`` term
    is the same for every memory), without the large shared part that makes every raw
    cosine close to 1 and the softmax flat.
    """
    return scale * F.normalize(completed, dim=-1) @ (bank - center).t()


def fragment_width(dim: int, grid: int) -> int:
    """Columns of a fragment's description: its mean embedding and ``grid * grid`` regions."""
    return dim * (1 + grid * grid)


def unit_blocks(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Each ``dim``-wide block of ``x`` (the mean, then every region) made unit length; a
    missing (``NaN``) block stays missing."""
    blocks = x.reshape(*x.shape[:-1], -1, dim)
    return F.normalize(blocks, dim=-1).reshape(x.shape)


class _Standardised(nn.Module):
    """Per-dimension mean and spread of the fragments and of the memories (set by the trainer),
    and the learned temperature of the recall cross-entropy.

    Fragments are ``in_dim`` wide (:func:`fragment_width`); a narrower input (a bare
    ``dim``-wide vector) and ``NaN`` columns are a layout left unknown, which standardises to
    the average (zero).
    """

    def __init__(self, dim: int, in_dim: int | None = None):
        super().__init__()
        self.dim, self.in_dim = dim, in_dim or dim
        self.register_buffer("fragment_mean", torch.zeros(self.in_dim))
        self.register_buffer("fragment_std", torch.ones(self.in_dim))
        self.register_buffer("memory_mean", torch.zeros(dim))
        self.register_buffer("memory_std", torch.ones(dim))
        self.log_recall_scale = nn.Parameter(torch.tensor(math.log(10.0)))

    @torch.no_grad()
    def set_statistics(self, fragments: torch.Tensor, memories: torch.Tensor) -> None:
        for prefix, x in (("fragment", fragments), ("memory", memories)):
            mean = torch.nanmean(x, dim=0).nan_to_num(0.0)
            spread = torch.nanmean((x - mean).pow(2), dim=0).nan_to_num(1.0).sqrt() if len(x) > 1 else None
            width = x.shape[-1]  # bare vectors (no layout) set the first columns only
            getattr(self, f"{prefix}_mean")[:width].copy_(mean)
            getattr(self, f"{prefix}_std")[:width].copy_(
                spread.clamp_min(1e-6) if spread is not None else torch.ones_like(mean))

    def standard_fragments(self, x: torch.Tensor) -> torch.Tensor:
        width = x.shape[-1]
        out = ((x - self.fragment_mean[:width]) / self.fragment_std[:width]).nan_to_num(0.0)
        if width < self.in_dim:  # no layout given: every region at its average
            out = torch.cat([out, out.new_zeros(*out.shape[:-1], self.in_dim - width)], dim=-1)
        return out

    def standard_memories(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.memory_mean) / self.memory_std

    def recall_loss(self, completed: torch.Tensor, bank: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        scale = self.log_recall_scale.exp().clamp(max=1e3)
        return F.cross_entropy(recall_logits(completed, bank, self.memory_mean, scale), targets)

    def loss(self, fragments: torch.Tensor, bank: torch.Tensor, targets: torch.Tensor,
             clean: torch.Tensor | None = None) -> torch.Tensor:
        """Cosine to ``clean`` (each fragment's own frame's embedding; its clip's when
        ``None``), the squared error in units of the memories' spread (a cosine search
        ranks by the common part too), and the recall cross-entropy over ``bank``."""
        completed = self(fragments, bank)
        clean = bank[targets] if clean is None else clean
        spread = ((completed - clean) / self.memory_std).pow(2).mean()
        return (completion_loss(completed, clean, self.memory_mean) + spread
                + self.recall_loss(completed, bank, targets))


class MLPReconstructor(_Standardised):
    """``memory_mean + memory_std * MLP(standardised fragment)``: three linear layers with GELU,
    the last zero-initialised so that training starts from the memories' mean."""

    def __init__(self, dim: int, hidden: int, in_dim: int | None = None):
        super().__init__(dim, in_dim)
        self.net = nn.Sequential(nn.Linear(self.in_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, dim))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, fragments: torch.Tensor, bank: torch.Tensor | None = None) -> torch.Tensor:
        del bank  # the MLP remembers through its weights only
        return self.memory_mean + self.memory_std * self.net(self.standard_fragments(fragments))


class PatternReconstructor(_Standardised):
    """``HopfieldLayer``: ``softmax(beta * q(fragment) K^T) @ V`` with ``patterns`` learned keys
    ``K`` and values ``V`` (the memories are in the weights, as the MLP's are).

    As in ml-jku/hopfield-layers, ``beta`` is ``1 / sqrt(assoc_dim)`` on unnormalised queries
    and keys: with unit queries and keys and a learned ``beta`` the softmax picked the same few
    patterns for every fragment and the layer never left the memories' mean (measured: recall
    at chance on the structured test case).
    """

    def __init__(self, dim: int, assoc_dim: int, patterns: int, in_dim: int | None = None):
        super().__init__(dim, in_dim)
        self.query = nn.Linear(self.in_dim, assoc_dim)
        self.keys = nn.Parameter(torch.randn(patterns, assoc_dim))
        self.values = nn.Parameter(torch.randn(patterns, dim))  # standardised units: random memories
        self.scale = assoc_dim ** -0.5

    def forward(self, fragments: torch.Tensor, bank: torch.Tensor | None = None) -> torch.Tensor:
        del bank
        q = self.query(self.standard_fragments(fragments))
        weights = torch.softmax(self.scale * q @ self.keys.t(), dim=-1)
        return self.memory_mean + self.memory_std * (weights @ self.values)


class HopfieldReconstructor(_Standardised):
    """One retrieval step of a modern Hopfield network with learned query and key maps.

    Args:
        dim: width of the vectors.
        in_dim: width of a fragment's description (:func:`fragment_width`); ``dim`` if ``None``.
        assoc_dim: width of the space where fragment and memories are compared.
        beta: starting inverse temperature (learned, as a log, kept positive). Near-duplicate
            moments need a large one: keys whose cosines differ by 0.01 are told apart only
            when ``beta * 0.01`` is well above 1.
    """

    def __init__(self, dim: int, assoc_dim: int, beta: float, in_dim: int | None = None):
        super().__init__(dim, in_dim)
        # The query side is nonlinear (a fragment's embedding relates to its frame's in ways
        # a linear map misses: measured on FFmpeg scenes, 25 %-crop R@1 0.63 linear); the key
        # side stays linear, so stored keys are cheap to compute for a million memories.
        self.query = nn.Sequential(nn.Linear(self.in_dim, assoc_dim * 2), nn.GELU(),
                                   nn.Linear(assoc_dim * 2, assoc_dim))
        self.key = nn.Linear(dim, assoc_dim)
        self.log_beta = nn.Parameter(torch.tensor(math.log(beta)))

    @property
    def beta(self) -> torch.Tensor:
        return self.log_beta.exp()

    def queries(self, fragments: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.query(self.standard_fragments(fragments)), dim=-1)

    def keys(self, bank: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.key(self.standard_memories(bank)), dim=-1)

    def logits(self, fragments: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
        """``(B, M)``: beta x cosine between each fragment's query and each stored pattern's key."""
        return self.beta * self.queries(fragments) @ self.keys(bank).t()

    def forward(self, fragments: torch.Tensor, bank: torch.Tensor | None = None) -> torch.Tensor:
        if bank is None:
            raise ValueError("the Hopfield reconstructor needs the stored patterns (bank)")
        return torch.softmax(self.logits(fragments, bank), dim=-1) @ bank

    def loss(self, fragments: torch.Tensor, bank: torch.Tensor, targets: torch.Tensor,
             clean: torch.Tensor | None = None) -> torch.Tensor:
        """Completion loss to the fragment's clip (a blend of clips can be no nearer to its
        frame than the clip itself), plus the cross-entropy of the association itself picking
        that clip: it sharpens ``beta`` and the keys so that a fragment recalls its moment
        rather than a blend of similar ones."""
        del clean
        logits = self.logits(fragments, bank)
        completed = torch.softmax(logits, dim=-1) @ bank
        return completion_loss(completed, bank[targets], self.memory_mean) + F.cross_entropy(logits, targets)


class HopfieldRecall:
    """The Hopfield update over a large memory: softmax over each query's ``top_k`` keys only.

    The stored patterns' keys are computed once; a query takes its ``top_k`` best keys and
    the softmax over those. With a large ``beta`` the rest of the softmax is negligible (a key
    ``d`` lower in cosine weighs ``exp(-beta * d)`` as much), so this is the full update at a
    cost that does not grow with the softmax over every memory.

    Where the keys are searched (``search``): ``torch`` (``auto``), one matrix product and
    ``torch.topk`` on the bank's own device, or ``faiss``, an exact inner-product index in RAM
    (``IndexFlatIP``). Both are exact. At a million patterns on 2 CPU cores torch took 41 ms a
    query against FAISS's 81 (4.9 ms against 33 a fragment in batches of 64); on an H200 the
    whole softmax over a million keys in GPU memory took 0.88 ms, FAISS's CPU index 19.8
    (BENCHMARKS.md, "Completion latency at a million stored patterns").
    """

    def __init__(self, model: HopfieldReconstructor, bank: torch.Tensor, top_k: int, batch_size: int = 65536,
                 search: str = "auto"):
        if search not in ("auto", "faiss", "torch"):
            raise ValueError(f"search {search!r}: expected auto, faiss or torch")
        self.model, self.top_k = model, min(top_k, len(bank))
        self.bank = bank
        self.search = "torch" if search == "auto" else search
        self.count = len(bank)
        self.index, self.keys = None, None
        with torch.no_grad():
            chunks = (model.keys(bank[start:start + batch_size]).float() for start in range(0, len(bank), batch_size))
            if self.search == "torch":
                self.keys = torch.cat(list(chunks))  # (N, A) on the bank's device
            else:
                import faiss

                self.index = faiss.IndexFlatIP(model.key.out_features)
                for keys in chunks:
                    self.index.add(np.ascontiguousarray(keys.cpu().numpy()))

    @torch.no_grad()
    def _top(self, q: torch.Tensor, rows_at_once: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cosines, rows)`` of each query's ``top_k`` keys, each ``(B, k)``."""
        if self.keys is not None:
            # A few hundred queries at a time: their scores against a million keys take 1 GB.
            parts = [torch.topk(q[i:i + rows_at_once] @ self.keys.T, self.top_k, dim=-1)
                     for i in range(0, len(q), rows_at_once)]
            return torch.cat([c for c, _ in parts]), torch.cat([r for _, r in parts])
        cosines, rows = self.index.search(np.ascontiguousarray(q.cpu().numpy()), self.top_k)
        return torch.from_numpy(cosines), torch.from_numpy(rows)

    @torch.no_grad()
    def __call__(self, fragments: torch.Tensor) -> torch.Tensor:
        cosines, rows = self._top(self.model.queries(fragments).float())
        weights = torch.softmax(self.model.beta.float().to(cosines.device) * cosines, dim=-1)
        picked = self.bank[rows.to(self.bank.device)]  # (B, k, D)
        return (weights.to(picked.device, picked.dtype)[:, :, None] * picked).sum(dim=1)


def build(variant: str, dim: int, cfg) -> _Standardised:
    """The named variant sized by the ``models.reconstruct`` config (its fragments described
    with a ``fragment_grid`` layout)."""
    in_dim = fragment_width(dim, cfg.fragment_grid)
    if variant == "mlp":
        return MLPReconstructor(dim, cfg.hidden, in_dim)
    if variant == "hopfield":
        return HopfieldReconstructor(dim, cfg.assoc_dim, cfg.beta, in_dim)
    if variant == "pattern":
        return PatternReconstructor(dim, cfg.assoc_dim, cfg.patterns, in_dim)
    raise ValueError(f"unknown reconstructor {variant!r}; expected mlp, hopfield or pattern")
