"""Glue for dreams on demand (``sleep.py dream`` / ``blend``, :mod:`api.dreams`): which stored
vectors of which clips, completed how, decoded by what.

With ``dream.backend: ours`` the vectors are the clips' vision vectors in the version the
newest dream decoder was trained on, completed by that night's reconstructor when it exists;
with ``unclip`` they are the clips' OpenCLIP vectors (space ``openclip``), for Stable unCLIP.
"""
from __future__ import annotations

import numpy as np

from core.errors import UsageError


def clip_dates(engine, clip_ids: list[int]) -> dict[int, str]:
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from memory.schema import Clip

    with Session(engine) as session:
        return dict(session.execute(select(Clip.id, Clip.date).where(Clip.id.in_(clip_ids))).all())


def _clip_vectors(engine, paths, space: str, version: str, clip_ids: list[int]) -> np.ndarray:
    """``(len(clip_ids), D)`` stored vectors of these clips in ``(space, version)``.

    Raises:
        UsageError: a clip not in the memory, or with no vector of that version (an earlier
            night's clip that was never re-embedded into it).
    """
    from memory.store import load_vectors

    dates = clip_dates(engine, clip_ids)
    for clip_id in clip_ids:
        if clip_id not in dates:
            raise UsageError(f"clip {clip_id}: no such clip in the memory (sleep.py query shows clip ids)")
    found: dict[int, np.ndarray] = {}
    for date in set(dates.values()):  # one read per day, however many of its clips are asked for
        rows, vectors = load_vectors(engine, paths, space=space, model_version=version, date=date)
        found.update((r.clip_id, vectors[i]) for i, r in enumerate(rows) if r.clip_id in dates)
    out = []
    for clip_id in clip_ids:
        if clip_id not in found:
            raise UsageError(f"clip {clip_id} ({dates[clip_id]}) has no {space} vector of {version}; "
                             f"sleep.py memory reembed --space {space} brings earlier days into it")
        out.append(found[clip_id])
    return np.stack(out).astype(np.float32)


def source_picture(paths, session, clip_id: int):
    """The clip's middle frame, or its kept keyframe when retention removed the frames."""
    from memory.media import clip_media, middle_frames

    candidates = [middle_frames(session, [clip_id]).get(clip_id)]
    candidates += [m.keyframe for m in clip_media(session, clip_ids=[clip_id])]
    for relative in candidates:
        if relative and (paths.root / relative).exists():
            return paths.root / relative
    return None


def ours(cfg, paths, engine, device: str, clip_ids: list[int]) -> tuple[np.ndarray, object, dict]:
    """The clips' completed vision vectors and a function decoding embeddings with our decoder."""
    import torch

    from dream.decoder import dream, load_decoder
    from models.checkpoint import latest_checkpoint
    from stages.reconstruct import load_completer

    checkpoint = latest_checkpoint(paths.checkpoints / "dream")
    if checkpoint is None:
        raise UsageError(f"{paths.checkpoints / 'dream'}: no dream decoder yet; run a night first")
    decoder, meta = load_decoder(checkpoint, device)
    version = meta["input_version"]
    vectors = _clip_vectors(engine, paths, "vision", version, clip_ids)
    completed_by = "nothing (no reconstructor of that version)"
    reconstructor = paths.checkpoints / "reconstruct" / checkpoint.name
    if reconstructor.exists():
        try:
            name, complete = load_completer(reconstructor, engine, paths, version, cfg.models.reconstruct.use,
                                            device)
            vectors, completed_by = complete(vectors), name
        except UsageError as exc:  # an older reconstructor: dream from the vectors as stored
            completed_by = f"nothing ({exc})"
    dcfg = meta["config"]

    def decode(embeddings: np.ndarray, generator) -> torch.Tensor:
        return dream(decoder, torch.as_tensor(embeddings), steps=dcfg.sample_steps, guidance=dcfg.guidance,
                     generator=generator, cond_noise=getattr(dcfg, "sample_cond_noise", 0.0)).cpu()

    return vectors, decode, {"backend": "ours", "decoder": checkpoint.stem, "vectors": f"vision {version}",
                             "completed_by": completed_by}


def unclip(cfg, paths, engine, device: str, clip_ids: list[int]) -> tuple[np.ndarray, object, dict]:
    from dream.unclip import decode_embeddings, load_unclip
    from models.openclip import weights_version

    version = weights_version(cfg.models.openclip)
    vectors = _clip_vectors(engine, paths, "openclip", version, clip_ids)
    dreamer = load_unclip(cfg.dream.unclip, device, embed_dim=vectors.shape[1])

    def decode(embeddings: np.ndarray, generator):
        return decode_embeddings(dreamer, embeddings, generator=generator, progress=False)

    return vectors, decode, {"backend": "unclip", "decoder": dreamer.name, "vectors": f"openclip {version}",
                             "completed_by": "nothing (OpenCLIP vectors as stored)"}
