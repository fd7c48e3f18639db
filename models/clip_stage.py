"""Stage ``clip``: embed tonight's frames with the user's OpenCLIP weights, for ``query --text``.

Only when ``models.clip.weights`` names a file; otherwise the stage notes that free-text
search is off and does nothing. Every frame goes into the space ``clip_frame`` and every
clip (the mean of its frames) into ``clip``, as ``clip@{model}-{weights hash}``: the same
version every night while the weights stay the same, so a text search spans all of them.
"""
from __future__ import annotations

import logging

import numpy as np

from pipeline.stages import Night

from .clip_text import load_clip

log = logging.getLogger(__name__)


def run(night: Night) -> dict:
    """Embed the night's frames and clips into ``clip_frame`` and ``clip``.

    Raises:
        ConfigError: the configured weights are missing or do not load (the stage fails and
            the report names the file).
    """
    from memory.media import day_frames
    from memory.store import EmbeddingRow, write_embeddings

    cfg = night.cfg.models.clip
    if not cfg.weights:
        return {"embedded": 0, "note": "no OpenCLIP weights configured (models.clip.weights): free-text "
                                       "search is off"}
    clip = load_clip(cfg, night.device)
    with night.Session() as session:
        frames = day_frames(session, night.day)
    if not frames:
        return {"embedded": 0, "model_version": clip.version, "note": "no frames tonight"}
    vectors, kept, failed = clip.embed_images([night.paths.root / f.path for f in frames], cfg.batch_size)
    if not kept:
        raise RuntimeError(f"none of the {len(frames)} frames of {night.day} could be read")
    rows = [EmbeddingRow(frames[i].clip_id, "vision", frames[i].frame_id) for i in kept]
    write_embeddings(night.engine, night.paths, space="clip_frame", model_version=clip.version, date=night.day,
                     rows=rows, vectors=vectors)
    clip_ids = np.array([r.clip_id for r in rows])
    clips, inverse = np.unique(clip_ids, return_inverse=True)
    sums = np.zeros((len(clips), vectors.shape[1]), np.float64)
    np.add.at(sums, inverse, vectors)
    write_embeddings(night.engine, night.paths, space="clip", model_version=clip.version, date=night.day,
                     rows=[EmbeddingRow(int(c), "vision") for c in clips], vectors=sums.astype(np.float32))
    log.info("clip: %d frames and %d clips embedded as %s", len(kept), len(clips), clip.version)
    return {"frames": len(frames), "embedded": len(kept), "clips": int(len(clips)), "failed": failed,
            "model_version": clip.version, "model": cfg.model}


def render(summary: dict, ctx) -> str | None:
    """Report section: what was embedded for free-text search, or why nothing was."""
    from report import html as h

    result = summary.get("clip")
    if not result:
        return None
    if result.get("note"):
        return f'<p class="muted">{h.esc(result["note"])}</p>'
    rows = [("model version", result.get("model_version")),
            ("frames embedded", f'{result.get("embedded")} of {result.get("frames")}'),
            ("clips", result.get("clips"))]
    failed = result.get("failed") or []
    return h.table(["", ""], rows) + "".join(
        f'<p class="muted">unreadable frame {h.esc(f["path"])}: {h.esc(f["reason"])}</p>' for f in failed[:50])
