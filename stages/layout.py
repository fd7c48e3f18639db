"""An image query's best hits scored again by layout: what is where in the picture.

A clip's vector in the space ``vision`` is its frame's patch tokens averaged over the whole
picture. That keeps what a picture holds and loses where, so look-alike scenes (another
day's Game of Life, the same street from the same corner) score within the third decimal of
the right moment, and after a week of days they outrank it (BENCHMARKS.md, "Across nights").
Here the best ``memory.search.layout_rerank`` hits of the vector search are scored again:
the query image and each hit's kept keyframe go through the newest vision encoder, their
tokens pooled over a ``layout_grid`` x ``layout_grid`` grid of regions
(:func:`models.vision.embed.embed_layouts`), and a hit's score becomes the mean cosine of
corresponding regions. Both sides come from one network, so hits found in different
versions (a day still reached through a map) are ranked against each other fairly.

``api.query`` uses it for image examples and stage ``probes`` for its photos, so what the
report measures is what a query gets. It costs one encoder pass per keyframe not seen before
by the same :class:`LayoutRanker` (``bench/across_nights.py`` prints the time per query).
"""
from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import torch
from sqlalchemy.orm import Session

from core.config import SleepConfig
from core.paths import Paths
from memory import Hit
from memory.keepsakes import keyframes
from models.checkpoint import CheckpointError
from models.vision.embed import embed_layouts, layout_scores, shared_target_encoder
from models.vision.frames import decode_frames, square_frame
from stages.common import version_checkpoint

log = logging.getLogger(__name__)

SPACES = ("vision", "vision_frame")  # the spaces whose hits are pictures of this encoder's kind


def reranks(cfg: SleepConfig, space: str) -> int:
    """How many best hits of an image query in ``space`` are scored by layout (0: none)."""
    return cfg.memory.search.layout_rerank if space in SPACES else 0


class LayoutRanker:
    """Scores hits by layout against query images, keeping each picture's layout between queries.

    Args:
        engine: the memory database (for each clip's keyframe).
        paths: the root's layout.
        cfg: the config (``memory.search.layout_grid``, ``models.jepa``).
        device: where the encoder runs.
    Raises:
        UsageError: no vision model trained yet.
        CheckpointError: the newest vision checkpoint does not load.
    """

    def __init__(self, engine, paths: Paths, cfg: SleepConfig, device: str):
        self.engine, self.paths, self.cfg, self.device = engine, paths, cfg, device
        self.grid = cfg.memory.search.layout_grid
        self.encoder = shared_target_encoder(version_checkpoint(paths, "vision"), cfg.models.jepa, device)
        self._layouts: dict[str, np.ndarray | None] = {}  # picture (relative to the root) -> layout

    def layout(self, image: torch.Tensor) -> np.ndarray:
        """``(grid * grid, dim)``: the layout of one ``(3, H, W)`` uint8 picture."""
        frame = square_frame(image, self.encoder.img_size).unsqueeze(0)
        return embed_layouts(self.encoder, frame, grid=self.grid, batch_size=1, bf16=self.cfg.models.jepa.bf16)[0]

    def rerank(self, image: torch.Tensor, hits: list[Hit]) -> list[Hit]:
        """``hits`` ordered by layout against ``image``, each hit's ``score`` its layout score.

        A hit whose clip has no readable picture (no keyframe kept and its frames gone) keeps
        its vector score, a cosine as well, and its place among the others by it.
        """
        if not hits:
            return hits
        pictures = self._pictures(hits)
        self._fill([p for p in pictures if p is not None and p not in self._layouts])
        query = self.layout(image)
        scored = []
        for hit, picture in zip(hits, pictures):
            layout = self._layouts.get(picture) if picture is not None else None
            score = hit.score if layout is None else float(layout_scores(query, layout[None])[0])
            scored.append(replace(hit, score=score))
        return sorted(scored, key=lambda h: -h.score)

    def _pictures(self, hits: list[Hit]) -> list[str | None]:
        """Each hit's picture, relative to the root: its own frame for a frame hit, else its clip's
        keyframe (what re-embedding embeds), else the clip's middle frame while on disk."""
        with Session(self.engine) as session:
            kept = keyframes(session, {h.clip_id for h in hits})
        root = self.paths.root
        out = []
        for hit in hits:
            order = ((hit.frame_path, kept.get(hit.clip_id)) if hit.space == "vision_frame"
                     else (kept.get(hit.clip_id), hit.frame_path))
            out.append(next((p for p in order if p and (p in self._layouts or (root / p).is_file())), None))
        return out

    def _fill(self, pictures: list[str]) -> None:
        """Decode and embed the layouts of ``pictures`` (unreadable ones are remembered as None)."""
        if not pictures:
            return
        cache = decode_frames([self.paths.root / p for p in pictures], self.encoder.img_size, self.device,
                              progress=False)
        for failed in cache.failed:
            log.warning("layout: %s: %s; its hit keeps its vector score", failed["path"], failed["reason"])
        layouts = embed_layouts(self.encoder, cache.images, grid=self.grid, bf16=self.cfg.models.jepa.bf16)
        got = dict(zip(cache.index, layouts))
        for i, picture in enumerate(pictures):
            self._layouts[picture] = got.get(i)


def layout_ranker(engine, paths: Paths, cfg: SleepConfig, device: str) -> LayoutRanker | None:
    """A :class:`LayoutRanker`, or ``None`` with a warning when the newest vision model does not
    load (the hits then keep the vector search's order)."""
    try:
        return LayoutRanker(engine, paths, cfg, device)
    except CheckpointError as exc:
        log.warning("layout: the hits keep the vector order: %s", exc)
        return None
