"""``sleep.py query ... --space shared``: map a vision or audio vector into the shared space."""
from __future__ import annotations

import numpy as np
import torch

from pipeline.config import AlignConfig, SleepConfig
from pipeline.errors import UsageError
from pipeline.paths import Paths

from .align import MODALITIES, AlignModel
from .align_train import project
from .checkpoint import latest_checkpoint, load_checkpoint


def load_latest_align(paths: Paths, device: str) -> tuple[str, AlignModel]:
    """The latest night's alignment heads.

    Raises:
        UsageError: no night has trained the alignment yet under this root.
    """
    latest = latest_checkpoint(paths.checkpoints / "align")
    if latest is None:
        raise UsageError(f"no alignment checkpoint yet under {paths.checkpoints / 'align'}: run a night "
                         "with both vision and audio first")
    checkpoint = load_checkpoint(latest, ("model", "config", "vision_dim", "audio_dim"))
    model = AlignModel(checkpoint["vision_dim"], checkpoint["audio_dim"], AlignConfig(**checkpoint["config"]))
    model.load_state_dict(checkpoint["model"])
    return checkpoint.get("model_version", f"align@{latest.stem}"), model.to(device).eval()


@torch.no_grad()
def to_shared(vector: np.ndarray, modality: str, cfg: SleepConfig, paths: Paths,
              device: str) -> tuple[str, np.ndarray]:
    """Project one sense's query vector into the ``shared`` space.

    Args:
        vector: ``(D,)`` from ``encode_image_file`` (``modality="vision"``) or
            ``encode_audio_file`` (``modality="audio"``).
        modality: which sense the vector came from.
        cfg: the validated config (unused beyond the interface; the heads carry their own).
        paths: the layout of the root whose checkpoints are used.
        device: ``cpu`` or ``cuda``.
    Returns:
        ``(model_version, vector)``: ``align@{date}`` and an L2-normalised ``(dim,)`` float32.
    Raises:
        UsageError: unknown modality, no checkpoint yet, or a vector of the wrong size.
    """
    if modality not in MODALITIES:
        raise UsageError(f"--modality {modality}: expected one of {', '.join(MODALITIES)}")
    version, model = load_latest_align(paths, device)
    vector = np.asarray(vector, dtype=np.float32).reshape(-1)
    if vector.shape[0] != model.dims[modality]:
        raise UsageError(f"a {modality} vector of size {vector.shape[0]} does not fit the alignment heads "
                         f"of {version} (size {model.dims[modality]}); run a night to retrain them")
    return version, project(model, vector[None], modality, device)[0]
