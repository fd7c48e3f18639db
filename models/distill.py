"""Feature distillation against last night's frozen encoder, so a night does not forget.

CaSSLe (Fini et al. 2022, "Self-Supervised Models are Continual Learners", CVPR): while
an encoder learns a new task, a small predictor maps its features of an input to the
features the frozen encoder of the previous task gives the same input, and the
self-supervised loss of the method (here BYOL's ``2 - 2 cos``) is applied between the two.
The predictor, not the encoder, absorbs the change of space, so the new features must keep
the old ones' information without being pinned to the old coordinates.

Each night is a task: the frozen encoder is last night's checkpoint, the predictor is fresh.
Both trainers (``models/vision/train.py``, ``models/audio/train.py``) add
``distill_weight * distill_loss(predictor(new), old)`` to their own loss.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DistillPredictor(nn.Module):
    """CaSSLe's predictor: ``Linear(D, hidden) -> BatchNorm1d -> ReLU -> Linear(hidden, D)``.

    Args:
        dim: feature width D of the encoder (new and old are the same shape).
        hidden: hidden width (2048 in CaSSLe).
    """

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, dim))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` new features -> ``(B, D)`` predicted old features (B >= 2 in training: BatchNorm)."""
        return self.net(features)


def distill_loss(predicted: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """CaSSLe's distillation loss for BYOL-like methods: ``2 - 2 cos(predicted, old)``, batch mean.

    Args:
        predicted: ``(B, D)`` the predictor's output on the new encoder's features.
        old: ``(B, D)`` the frozen old encoder's features of the same inputs (no gradient
            flows into them).
    Returns:
        a 0-d float32 tensor in ``[0, 4]``: 0 when every pair points the same way, 4 when
        every pair points opposite ways.
    """
    cos = F.cosine_similarity(predicted.float(), old.detach().float(), dim=-1)  # (B,)
    return (2 - 2 * cos).mean()


def predictor_groups(predictor: DistillPredictor, weight_decay: float) -> list[dict]:
    """AdamW parameter groups for a predictor, tagged ``"distill": True``.

    The predictor is fresh each night, so its groups are added to the night's optimizer
    after last night's state is loaded and left out of the checkpoint
    (:func:`without_distill_groups`): the next night's optimizer then loads it unchanged.
    Weight matrices decay; biases and BatchNorm parameters (1-D) do not.
    """
    decay = [p for p in predictor.parameters() if p.ndim >= 2]
    no_decay = [p for p in predictor.parameters() if p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay, "decay": True, "distill": True},
            {"params": no_decay, "weight_decay": 0.0, "decay": False, "distill": True}]


def without_distill_groups(state: dict) -> dict:
    """An optimizer ``state_dict()`` without the groups (and moments) of the predictor.

    Args:
        state: ``optimizer.state_dict()``: ``{"state": {id: ...}, "param_groups": [...]}``.
    Returns:
        the same shape, holding only groups without ``"distill": True``.
    """
    groups = [g for g in state["param_groups"] if not g.get("distill")]
    kept = {i for g in groups for i in g["params"]}
    return {"state": {i: s for i, s in state["state"].items() if i in kept}, "param_groups": groups}
