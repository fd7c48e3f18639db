"""Dreams on demand: ``sleep.py dream`` and ``sleep.py blend`` as data.

A dream of a moment is its embedding decoded into a picture; a blend is two moments'
embeddings spherically interpolated (slerp) and decoded: a moment that never happened.

With the default backend (``dream.backend: ours``) the embeddings are the clips' vision
vectors in the version the newest dream decoder was trained on, completed by that night's
reconstructor (what the memory "recalls" of them; as they are when no reconstructor of that
version exists), and decoded by that decoder with its EMA weights. With ``dream.backend:
unclip`` they are the clips' OpenCLIP vectors (space ``openclip``), decoded by Stable unCLIP
from local weights (:mod:`dream.unclip`).

Each call writes one folder under ``reports/dreams/``: the dreams as PNGs, each source
moment's picture, and ``dream.json`` saying what was decoded from what, written at once
(never half a folder), each file sealed when the memory is.
"""
from __future__ import annotations

import datetime as dt
import json
import logging

import numpy as np

from api.args import Root, config_of, memory_of
from core.errors import UsageError

log = logging.getLogger(__name__)
MAX_DREAMS = 64


def dream_clips(root: Root, a: int, b: int | None = None, *, mixes: list[float] | None = None, n: int = 4,
                config=None, overrides: list[str] | None = None, device: str | None = None, seed: int = 0) -> dict:
    """Decode clip ``a`` (``n`` dreams), or blends of ``a`` and ``b``, into PNGs.

    Args:
        root: the folder holding ``memory/``, ``checkpoints/`` and ``reports/``.
        a, b: clip ids (``sleep.py query`` lists them).
        mixes: with ``b``, the share of ``b`` in each blend (``[0.5]``: half-way); ``None``
            with ``b``: ``n`` blends evenly between them; without ``b``: ignored.
        n: dreams of ``a`` alone (each from other starting noise), or blends when ``mixes``
            is ``None``.
        config: a config path or object (``dream.backend`` picks the decoder).
        overrides: ``key.path=value`` strings applied to a config file.
        device: ``"cpu"``/``"cuda"`` (default: ``runtime.device``).
        seed: the starting noise; the same seed dreams the same pictures.
    Returns:
        ``{"folder", "backend", "decoder", "vectors", "completed_by", "sources": [...],
        "dreams": [{"file", "mix"}]}``; files are relative to ``root``.
    Raises:
        UsageError: a missing clip, a clip without a vector of the decoder's version, no
            decoder yet, a bad mix or count.
    """
    import torch
    from PIL import Image

    from core.device import resolve_device
    from memory import make_sessionmaker, open_database
    from stages import dream_on_demand as on_demand
    from stages.dream import slerp, write_dream_folder

    if not 1 <= n <= MAX_DREAMS:
        raise UsageError(f"--n {n}: dream between 1 and {MAX_DREAMS} pictures at a time")
    if b is None:
        mixes = [0.0] * n
    elif mixes is None:
        mixes = [round((i + 1) / (n + 1), 4) for i in range(n)]
    for mix in mixes:
        if not 0 <= mix <= 1:
            raise UsageError(f"--mix {mix}: the share of clip B must be between 0 and 1")
    paths = memory_of(root)
    cfg = config_of(config, overrides)
    device = resolve_device(device or cfg.runtime.device)
    clip_ids = [int(a)] + ([int(b)] if b is not None else [])
    engine = open_database(paths.database)
    try:
        backend = on_demand.unclip if cfg.dream.backend == "unclip" else on_demand.ours
        vectors, decode, about = backend(cfg, paths, engine, device, clip_ids)
        ends = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        embeddings = (np.repeat(ends[:1], len(mixes), axis=0) if b is None
                      else np.concatenate([slerp(ends[0], ends[1], mix)[None] for mix in mixes]))
        images = decode(embeddings, torch.Generator().manual_seed(seed))
        Session = make_sessionmaker(engine)
        with Session() as session:
            pictures = {c: on_demand.source_picture(paths, session, c) for c in clip_ids}
        dates = on_demand.clip_dates(engine, clip_ids)
    finally:
        engine.dispose()

    kind = "dream" if b is None else "blend"
    stamp = dt.datetime.now().strftime("%Y%m%dT%H%M%S")
    name = f"{stamp}-{kind}-{a}" + (f"-{b}" if b is not None else "")
    final = paths.dreams_on_demand / name
    sources, dreams = [], []
    files: dict[str, Image.Image] = {}
    for label, clip_id in zip("ab", clip_ids):
        entry = {"clip_id": clip_id, "date": dates[clip_id], "picture": None}
        if pictures[clip_id] is not None:
            with paths.vault.open(pictures[clip_id]) as stored, Image.open(stored) as image:
                files[f"source-{label}.png"] = image.convert("RGB")
            entry["picture"] = str((final / f"source-{label}.png").relative_to(paths.root))
        sources.append(entry)
    for i, (image, mix) in enumerate(zip(images, mixes)):
        file = f"{kind}-{i + 1:02d}.png"
        files[file] = Image.fromarray(image.permute(1, 2, 0).numpy())
        dreams.append({"file": str((final / file).relative_to(paths.root)), "mix": mix if b is not None else None})
    result = {"folder": str(final.relative_to(paths.root)), "kind": kind, **about, "seed": seed,
              "sources": sources, "dreams": dreams}
    # Sealed when the memory is: the pictures are of its moments.
    write_dream_folder(paths, final, files, {"dream.json": json.dumps(result, indent=2)})
    log.info("%s: %d pictures in %s", kind, len(dreams), final)
    return result
