"""Exponential moving average of a network's weights (I-JEPA's target encoder).

The shadow is a frozen module, updated under ``no_grad`` after each optimizer step:
``shadow = m * shadow + (1 - m) * source`` (ijepa ``src/train.py``; the API follows
diffusers' ``training_utils.EMAModel``: ``step``, ``copy_to``, ``state_dict``).
"""
from __future__ import annotations

import torch
from torch import nn


class EMA:
    """Holds ``shadow``, a frozen module the same shape as the networks it follows.

    Args:
        shadow: the module to keep as the average (its weights are the starting point);
            its parameters are set to ``requires_grad=False``.
    """

    def __init__(self, shadow: nn.Module):
        self.shadow = shadow.requires_grad_(False)
        self.num_updates = 0
        self.last_momentum: float | None = None

    @torch.no_grad()
    def step(self, source: nn.Module, momentum: float) -> None:
        """Move the shadow towards ``source`` by ``1 - momentum``.

        Args:
            source: the trained module (same parameter order as the shadow).
            momentum: in ``[0, 1]``; 1 leaves the shadow unchanged.
        """
        shadow = list(self.shadow.parameters())
        params = [p.detach() for p in source.parameters()]
        if len(shadow) != len(params):
            raise ValueError("EMA: source and shadow have different parameter lists")
        # lerp(shadow, p, 1 - m) == m * shadow + (1 - m) * p, fused over all tensors.
        torch._foreach_lerp_(shadow, params, 1.0 - momentum)
        self.num_updates += 1
        self.last_momentum = momentum

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> None:
        """Write the averaged weights into ``module`` (e.g. an encoder used for embedding)."""
        module.load_state_dict(self.shadow.state_dict())

    def state_dict(self) -> dict:
        return {"shadow": self.shadow.state_dict(), "num_updates": self.num_updates,
                "last_momentum": self.last_momentum}

    def load_state_dict(self, state: dict) -> None:
        self.shadow.load_state_dict(state["shadow"])
        self.num_updates = int(state["num_updates"])
        self.last_momentum = state.get("last_momentum")
