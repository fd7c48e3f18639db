"""How one example reaches the whole memory of a space: the searches that answer it.

A space is searched in its active version (:func:`memory.active_version`), with the example
embedded by the checkpoint that wrote it. While tonight's version is still being filled by
re-embedding (stage ``reembed``), a map fitted from tonight's version into the active one
lets the newest encoder reach every day at once: its version answers for the days it
covers, the active version (through the map) for the rest. ``api.query`` and stage
``probes`` both plan their searches here, so that what the report measures is what a
query gets. Light on purpose: NumPy and the memory only, no torch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from memory import Hit, active_version, covered_days, latest_version, search
from memory.maps import load_map
from memory.versions import version_date
from models.space_map import SpaceMap

# The spaces a map is fitted on, and those it serves (vision_frame is the same encoder's space).
MAPPED = {"vision": ("vision", "vision_frame"), "audio": ("audio",)}
# encode(version) -> (model_version, vector): the example embedded with that version's checkpoint.
Encode = Callable[[str | None], tuple[str, np.ndarray]]


@dataclass(frozen=True)
class PlannedSearch:
    """One search of a query: ``vector`` over ``version``, leaving out ``skip_dates`` whole
    (the days another search of the same query answers for)."""

    version: str
    vector: np.ndarray
    skip_dates: frozenset[str] = frozenset()


def map_query(engine, paths, space: str, from_version: str, to_version: str, vector: np.ndarray) -> np.ndarray | None:
    """``vector`` of ``from_version`` carried into ``to_version`` by the stored map; ``None``
    when there is no map between the two."""
    stored = load_map(engine, paths, space, from_version, to_version)
    if stored is None:
        return None
    return SpaceMap.from_arrays(stored.kind, stored.arrays, stored.heldout).apply(vector)


def search_plan(engine, paths, space: str, encode: Encode, model_version: str | None = None) -> list[PlannedSearch]:
    """The searches whose hits, merged by score (:func:`search_planned`), answer one example.

    Args:
        engine: the memory database.
        paths: the root's layout.
        space: the space searched.
        encode: ``encode(version) -> (model_version, vector)``: the example embedded with the
            checkpoint of ``version`` (``None``: the newest, when nothing is stored yet).
        model_version: search this version alone; ``None``: the active version, or the
            newest and the active one through a map while re-embedding is unfinished.
    Returns:
        one or two :class:`PlannedSearch`, the first searched by the vector ``encode`` made.
    """
    active = model_version or active_version(engine, space)  # None: nothing stored yet
    if model_version is None and active is not None and space in {s for v in MAPPED.values() for s in v}:
        newest = latest_version(engine, space)
        if newest is not None and (version_date(newest) or "") > (version_date(active) or ""):
            _, vector = encode(newest)
            mapped = map_query(engine, paths, space, newest, active, vector)
            if mapped is not None:
                return [PlannedSearch(newest, vector),
                        PlannedSearch(active, mapped, frozenset(covered_days(engine, space, newest)))]
    version, vector = encode(active)
    return [PlannedSearch(active or version, vector)]


def search_planned(engine, paths, space: str, plan: list[PlannedSearch], *, topk: int, **filters) -> list[Hit]:
    """The hits of every search in ``plan``, merged by score: up to ``topk``, best first.

    Args:
        filters: :func:`memory.search`'s other keywords (dates, modality, source,
            ``exclude_clip_ids``, ``options``), the same for every search.
    Raises:
        ValueError: a vector that is not a finite non-zero vector of its version's dimension.
    """
    hits: list[Hit] = []
    for planned in plan:
        hits += search(engine, paths, space=space, query=planned.vector, topk=topk, model_version=planned.version,
                       skip_dates=planned.skip_dates, **filters)
    return sorted(hits, key=lambda h: -h.score)[:topk]
