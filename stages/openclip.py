"""Stage ``openclip``: embed tonight's frames with the user's OpenCLIP weights, for ``query --text``.

Only when ``models.openclip.weights`` names a file; otherwise the stage notes that free-text
search is off and does nothing. Every frame goes into the space ``openclip_frame`` and every
clip (the mean of its frames) into ``openclip``, as ``openclip@{model}-{weights hash}``: the same
version every night while the weights stay the same, so a text search spans all of them.
"""
from __future__ import annotations

import logging

import numpy as np

from core.config import OpenClipConfig
from core.errors import ConfigError
from models.openclip import Clip, WeightsError, load_clip
from stages import Night

log = logging.getLogger(__name__)


def load_text_encoder(cfg: OpenClipConfig, device: str) -> Clip:
    """The user's OpenCLIP model, for the night and for ``query --text``.

    Raises:
        ConfigError: the configured weights are not set, missing, or do not load.
    """
    try:
        return load_clip(cfg, device)
    except WeightsError as exc:
        raise ConfigError(str(exc)) from None


def run(night: Night) -> dict:
    """Embed the night's frames and clips into ``openclip_frame`` and ``openclip``.

    Raises:
        ConfigError: the configured weights are missing or do not load (the stage fails and
            the report names the file).
    """
    from memory.media import day_frames
    from memory.store import EmbeddingRow, write_embeddings

    cfg = night.cfg.models.openclip
    if not cfg.weights:
        return {"embedded": 0, "note": "no OpenCLIP weights configured (models.openclip.weights): free-text "
                                       "search is off"}
    clip = load_text_encoder(cfg, night.device)
    with night.Session() as session:
        frames = day_frames(session, night.day)
    if not frames:
        return {"embedded": 0, "model_version": clip.version, "note": "no frames tonight"}
    vectors, kept, failed = clip.embed_images([night.paths.root / f.path for f in frames], cfg.batch_size)
    if not kept:
        raise RuntimeError(f"none of the {len(frames)} frames of {night.day} could be read")
    rows = [EmbeddingRow(frames[i].clip_id, "vision", frames[i].frame_id) for i in kept]
    write_embeddings(night.engine, night.paths, space="openclip_frame", model_version=clip.version, date=night.day,
                     rows=rows, vectors=vectors)
    clip_ids = np.array([r.clip_id for r in rows])
    clips, inverse = np.unique(clip_ids, return_inverse=True)
    sums = np.zeros((len(clips), vectors.shape[1]), np.float64)
    np.add.at(sums, inverse, vectors)
    write_embeddings(night.engine, night.paths, space="openclip", model_version=clip.version, date=night.day,
                     rows=[EmbeddingRow(int(c), "vision") for c in clips], vectors=sums.astype(np.float32))
    log.info("openclip: %d frames and %d clips embedded as %s", len(kept), len(clips), clip.version)
    return {"frames": len(frames), "embedded": len(kept), "clips": int(len(clips)), "failed": failed,
            "model_version": clip.version, "model": cfg.model}
