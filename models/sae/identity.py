"""Which of tonight's neurons is which of last night's: Hungarian matching of decoder directions.

A neuron of the sparse autoencoder is its decoder column, a direction in the input space.
Retrained (warm-started) on a new night, most columns move a little; a few die or are
reborn elsewhere. One-to-one assignment maximising the summed cosine
(``scipy.optimize.linear_sum_assignment``) pairs them up; pairs below ``threshold`` are
not the same neuron (tonight's is born, last night's is lost).
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment


def decoder_directions(state_dict: dict) -> np.ndarray:
    """``(latents, n_inputs)`` unit decoder directions from a :class:`SparseAutoencoder` state dict."""
    weight = state_dict["decoder.weight"]  # nn.Linear(n_latents, n_inputs): (n_inputs, n_latents)
    weight = weight.detach().cpu().numpy() if hasattr(weight, "detach") else np.asarray(weight)
    directions = np.asarray(weight, dtype=np.float64).T
    return directions / np.maximum(np.linalg.norm(directions, axis=1, keepdims=True), 1e-12)


def match_latents(new: np.ndarray, old: np.ndarray, threshold: float) -> list[tuple[int, int, float]]:
    """Pair tonight's latents with last night's.

    Args:
        new: ``(L_new, D)`` tonight's unit decoder directions.
        old: ``(L_old, D)`` last night's, in the same input width.
        threshold: the least cosine at which a pair is the same neuron.
    Returns:
        ``[(new_latent, old_latent, cosine)]`` for the assigned pairs at or above
        ``threshold``, by new latent.
    Raises:
        ValueError: the two dictionaries have different input widths.
    """
    if new.shape[1] != old.shape[1]:
        raise ValueError(f"decoders of width {new.shape[1]} and {old.shape[1]} cannot be matched")
    cosine = new @ old.T
    rows, cols = linear_sum_assignment(cosine, maximize=True)
    return [(int(r), int(c), float(cosine[r, c])) for r, c in zip(rows, cols) if cosine[r, c] >= threshold]
