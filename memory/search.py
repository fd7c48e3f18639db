"""Search by example: cosine top-k in one space and model version, with filters.

Filters (date range, modality, source file) become a row mask before top-k, so a filter
never shortens the result list while matching rows remain. The date range picks shards;
modality and source need each row's clip, read once per shard and cached in the process.

Which engine runs (``memory.search`` in the config):

- below ``faiss_threshold`` rows, or when the filters leave fewer rows than that: exact
  search over the memory-mapped shards (:mod:`memory.exact`);
- above it, the configured FAISS index over all of the version's shards (``flat``: exact
  ``IndexFlatIP``; ``ivf``/``ivfpq``/``hnsw``: approximate, tuned when built so recall@10
  stays >= ``min_recall``, else flat; ``auto``: IVF where that holds cheaply, else the
  exact path), with filters as an ID bitmap. ``exact`` never uses FAISS.
  Indexes are cached in the process (and approximate ones on disk under
  ``memory/index/``) keyed by the version's shard files, so a new night rebuilds them;
- no index larger than ``index_ram_gb`` is built (a year of frames is ~21M vectors): there
  ``auto`` builds IVF-PQ (codes in RAM, re-ranked from the shards) instead of IVF, and
  ``flat``, or an approximate index that missed the floor, searches exactly over the
  memory maps instead of holding a float32 copy.

Every candidate is finally looked up in the database; one whose row has gone (a day
forgotten meanwhile) is dropped and the next one taken.

A damaged shard (missing, cut short, or a block that fails its checksum: see
:mod:`memory.shards`) is left out of the search with a warning naming it and what is wrong,
never ranked: the rest of the memory still answers, and ``sleep.py doctor`` quarantines it.

In a sealed memory (``memory.encryption: on``) the shards are sealed (a sealed shard that
does not decrypt is damaged, as above) and so are the cached indexes and their ``.json``:
written and read through the root's vault, never as plaintext under the root.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Collection
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import Engine, func, select, tuple_
from sqlalchemy.orm import Session

from core.paths import Paths
from core.sealed import SealedFileError, is_sealed
from memory.catalog import (
    EmbeddingSpace,
    Shard,
    ShardRow,
    complete_shards,
    latest_version,
)
from memory.exact import Block, exact_topk
from memory.media import middle_frames
from memory.schema import Clip, Frame, Source
from memory.shards import (
    ShardError,
    check_rows,
    open_shard,
    private_folder,
    read_rows,
    release_maps,
    shard_folder,
)

log = logging.getLogger(__name__)
# Rounds of three attempts a search makes while writers keep replacing the shards it reads.
MAX_SHARD_RACES = 20


@dataclass(frozen=True)
class SearchOptions:
    """Engine choice; mirrors ``core.config.SearchConfig`` (any object with these fields)."""

    index: str = "auto"
    faiss_threshold: int = 200_000
    min_recall: float = 0.95
    index_ram_gb: float = 8.0


@dataclass(frozen=True)
class Hit:
    """One result: a clip, how close it is, and where to find it."""

    clip_id: int
    score: float
    space: str
    model_version: str
    modality: str
    date: str
    wall_start: str | None  # ISO time the clip starts, when the recording said
    source_path: str  # the raw file, relative to the root
    start_s: float  # offset of the clip in the source
    end_s: float
    frame_path: str | None  # a frame of the clip, relative to the root
    # The day's episode the clip belongs to (memory.episodes.episode_of), once the episodes
    # stage has run on its day; api.query fills it in.
    episode: dict | None = None

    def as_dict(self) -> dict:
        return asdict(self)


# Process caches. Shard files are never rewritten in place (every write has a new name),
# so a path identifies its content for good.
_ROW_META: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
_INDEXES: dict[tuple, object] = {}
# Shards found damaged in this process, by path: what is wrong (warned about once).
DAMAGED: dict[str, str] = {}
# What the index cache holds for a memory where ``auto`` found no approximate index worth
# using (e.g. isotropic vectors: IVF must probe every list): the exact path is faster.
EXACT = "exact"


def _row_meta(session: Session, shard: Shard) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row of ``shard``: clip id, modality, source id (``-1``/``""`` where the row is gone)."""
    meta = _ROW_META.get(shard.path)
    if meta is None:
        clip = np.full(shard.rows, -1, np.int64)
        source = np.full(shard.rows, -1, np.int64)
        modality = np.full(shard.rows, "", dtype="<U8")
        result = session.execute(
            select(ShardRow.row, ShardRow.clip_id, ShardRow.modality, Clip.source_id)
            .join(Clip, Clip.id == ShardRow.clip_id).where(ShardRow.shard_id == shard.id))
        for row, clip_id, mod, source_id in result:
            clip[row], modality[row], source[row] = clip_id, mod, source_id
        meta = _ROW_META[shard.path] = (clip, modality, source)
    return meta


def _masks(session: Session, shards: list[Shard], modality: str | None,
           source: str | None) -> list[np.ndarray | None]:
    if modality is None and source is None:
        return [None] * len(shards)
    source_ids = None
    if source is not None:
        source_ids = np.array(list(session.scalars(
            select(Source.id).where(func.instr(Source.path, source) > 0))), np.int64)
    masks = []
    for shard in shards:
        clip, mods, sources = _row_meta(session, shard)
        mask = clip >= 0
        if modality is not None:
            mask &= mods == modality
        if source_ids is not None:
            mask &= np.isin(sources, source_ids)
        masks.append(mask)
    return masks


def _fires(paths: Paths, shard: Shard, dims: Collection[int], mask: np.ndarray | None,
           chunk_rows: int = 262_144) -> np.ndarray:
    """``mask`` and "some of ``dims`` is positive", read in chunks from the memory map."""
    matrix = open_shard(paths, shard)
    cols = np.asarray(sorted(set(dims)), dtype=np.int64)
    fires = np.concatenate([(np.asarray(matrix[i:i + chunk_rows][:, cols]) > 0).any(axis=1)
                            for i in range(0, len(matrix), chunk_rows)] or [np.zeros(0, bool)])
    return fires if mask is None else fires & mask


def _fits(kind: str, rows: int, dim: int, options) -> bool:
    from memory.faiss_index import index_bytes

    return index_bytes(kind, rows, dim) <= options.index_ram_gb * 2**30


def _index_kind(options, rows: int, dim: int) -> str:
    """The FAISS index to build over ``rows`` vectors of ``dim``, or :data:`EXACT`."""
    if options.index == "auto":
        # IVF where it keeps recall@10 >= min_recall without scanning most of the memory,
        # else the exact path (bench: faster than FAISS flat at every size measured); IVF-PQ
        # where IVF's float16 copy of every vector would not fit in the RAM budget.
        return "ivf" if _fits("ivf", rows, dim, options) else "ivfpq"
    if options.index == "flat" and not _fits("flat", rows, dim, options):
        log.debug("a float32 copy of %d vectors exceeds memory.search.index_ram_gb; "
                  "searching exactly over the shards", rows)
        return EXACT  # the same results, from the memory maps
    return options.index


def _faiss_index(paths: Paths, space: EmbeddingSpace, shards: list[Shard], blocks: list[Block],
                 kind: str, options):
    """The FAISS index over all of the version's shards, from the caches or built now."""
    from memory import faiss_index

    key = (space.id, kind, options.min_recall, tuple(s.path for s in shards))
    cached = _INDEXES.get(key)
    if cached is not None:
        return cached
    digest = hashlib.sha256(json.dumps(key[1:]).encode()).hexdigest()[:16]
    folder = index_folder(paths, space.name, space.model_version)
    file = folder / f"{kind}-{digest}.faiss"
    meta_file = file.with_suffix(".json")
    built = None
    vault = paths.vault
    if kind != "flat" and file.exists() and meta_file.exists():
        try:
            meta = json.loads(vault.read_text(meta_file))
            built = faiss_index.TunedIndex(_read_index(vault, file), meta["kind"], meta["param"],
                                           meta["recall"], meta.get("rerank_factor"), rows=blocks)
        except SealedFileError as exc:  # a cache: built again below, and written over
            log.warning("cached index %s does not decrypt (%s): building it again", file, exc)
        except (OSError, RuntimeError, ValueError, KeyError) as exc:
            # Removed by another process's rebuild between the check and the read (FAISS says
            # so as a RuntimeError), or damaged: a cache, built again below.
            log.warning("cached index %s did not load (%s): building it again", file, exc)
    elif kind != "flat" and meta_file.exists():
        return EXACT  # measured before: this memory is searched exactly
    if built is None:
        for shard in shards:  # a build reads every row: check every block first
            if shard.path not in DAMAGED:
                open_shard(paths, shard)
        log.info("building a %s index over %d %s vectors", kind, sum(s.rows for s in shards),
                 space.name)
        # A flat fallback only where its float32 copy fits; else the exact path, same results.
        fallback_flat = options.index != "auto" and _fits(
            "flat", faiss_index.total_rows(blocks), space.dim, options)
        built = faiss_index.build_index(blocks, kind, min_recall=options.min_recall,
                                        fallback_flat=fallback_flat)
        if built is None or built.kind != "flat":
            import faiss

            private_folder(paths, folder)
            for old in folder.glob(f"{kind}-*"):  # earlier shard sets: stale
                old.unlink(missing_ok=True)
            if built is not None:
                with vault.writer(file) as fh:  # streamed (and sealed): no second copy of the index in RAM
                    faiss.write_index(built.index, faiss.PyCallbackIOWriter(fh.write))
            vault.write_text(meta_file, json.dumps(
                {"kind": built.kind if built else EXACT, "param": built and built.param,
                 "recall": built and built.recall,
                 "rerank_factor": built and built.rerank_factor}))
        built = built or EXACT
    _INDEXES.clear()  # one index per process is plenty; they are large
    _INDEXES[key] = built
    return built


def _read_index(vault, file: Path):
    """The FAISS index cached in ``file``: read by FAISS itself when plain, else decrypted as
    FAISS reads it (streamed: no plaintext copy of the file in RAM beside the index).

    Raises:
        SealedFileError: sealed, and a chunk does not decrypt.
    """
    import faiss

    if not is_sealed(file):
        return faiss.read_index(str(file))
    failed: list[SealedFileError] = []

    def read(size: int) -> bytes:
        try:
            return fh.read(size)
        except SealedFileError as exc:  # FAISS turns a callback's error into its own: kept
            failed.append(exc)
            raise

    with vault.open(file) as fh:
        try:
            return faiss.read_index(faiss.PyCallbackIOReader(read))
        except Exception:
            if failed:
                raise failed[0] from None
            raise


def index_folder(paths: Paths, space: str, model_version: str) -> Path:
    """Where approximate indexes of one space and version are cached."""
    return paths.memory / "index" / space / model_version


def _candidates(paths, session, space, all_shards, shards, masks, query, fetch, options):
    """``[(score, shard, row)]`` best first, at most ``fetch`` of them."""
    allowed_rows = sum(int(m.sum()) if m is not None else s.rows for s, m in zip(shards, masks))
    total_rows = sum(s.rows for s in all_shards)
    use_faiss = (options.index != "exact" and total_rows >= options.faiss_threshold
                 and allowed_rows >= options.faiss_threshold)
    if not use_faiss:
        # Every row is read: every block is checked (once per process); a sealed shard is
        # decrypted whole (and kept, as a memory map would be).
        blocks = []
        start = 0
        for shard, mask in zip(shards, masks):
            blocks.append(Block(start, open_shard(paths, shard), mask))
            start += shard.rows
        scores, ids = exact_topk(blocks, query, fetch)
        located = [_locate(shards, blocks, int(i)) for i in ids]
        return [(float(s), sh, r) for s, (sh, r) in zip(scores, located)]

    # FAISS: ids are positions in the concatenation of *all* the version's shards, so one
    # index serves every date range; the date range and the filters become a bitmap.
    all_blocks, pos = [], 0
    for shard in all_shards:
        all_blocks.append(Block(pos, _rows_of(paths, shard)))
        pos += shard.rows
    kind = _index_kind(options, total_rows, space.dim)
    built = EXACT if kind == EXACT else _faiss_index(paths, space, all_shards, all_blocks, kind,
                                                     options)
    if built == EXACT:
        return _candidates(paths, session, space, all_shards, shards, masks, query, fetch,
                           SearchOptions(index="exact"))
    allowed = None
    if allowed_rows < total_rows:
        allowed = np.zeros(total_rows, bool)
        chosen = {s.path: m for s, m in zip(shards, masks)}
        for shard, block in zip(all_shards, all_blocks):
            if shard.path in chosen:
                m = chosen[shard.path]
                allowed[block.offset:block.offset + shard.rows] = True if m is None else m
    param = built.param
    built.check_rows = _checker(paths, all_shards, all_blocks)
    if allowed is not None and built.kind in ("ivf", "ivfpq"):
        # Fewer allowed rows per list: probe proportionally more lists to keep recall.
        built.param = min(built.index.nlist, math.ceil(param * total_rows / allowed_rows))
    try:
        scores, ids = built.search(query[None], fetch, allowed)
    finally:
        built.param = param
    out = []
    for s, i in zip(scores[0], ids[0]):
        if i >= 0:
            shard, row = _locate(all_shards, all_blocks, int(i))
            out.append((float(s), shard, row))
    return out


def _rows_of(paths: Paths, shard: Shard):
    """A shard's memory map for the FAISS path, its blocks checked as rows are read
    (:func:`_checker`; a sealed shard's :class:`memory.shards.SealedRows`, which decrypts and
    authenticates only the rows a re-ranking reads); for a damaged shard, zeros that no search
    returns (its rows are left out of ``allowed``), so one damaged night neither stops the
    search nor rebuilds the index."""
    if shard.path in DAMAGED:
        return np.zeros((shard.rows, shard.dim), np.float16)  # untouched pages: no memory
    return open_shard(paths, shard, check=False)


def _checker(paths: Paths, shards: list[Shard], blocks: list[Block]):
    """For :attr:`memory.faiss_index.TunedIndex.check_rows`: checks the blocks of the rows
    (global ids) a re-ranking is about to read."""
    def check(ids: np.ndarray) -> None:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        for shard, block in zip(shards, blocks):
            mine = ids[(ids >= block.offset) & (ids < block.offset + shard.rows)]
            if len(mine):
                check_rows(paths, shard, mine - block.offset)
    return check


def _locate(shards: list[Shard], blocks: list[Block], gid: int) -> tuple[Shard, int]:
    for shard, block in zip(shards, blocks):
        if block.offset <= gid < block.offset + shard.rows:
            return shard, gid - block.offset
    raise IndexError(gid)


def row_moments(session: Session, keys: list[tuple[int, int]]) -> dict[tuple[int, int], dict]:
    """What each ``(shard id, row)`` still in the database is: ``clip_id``, ``modality``,
    ``date``, ``wall_start`` (ISO), ``source_path``, ``start_s``, ``end_s`` and ``frame_path``
    (the row's own frame, else its clip's middle frame)."""
    if not keys:
        return {}
    found = {}
    for shard_id, row, clip_id, modality, date, wall, start, end, source, frame in session.execute(
            select(ShardRow.shard_id, ShardRow.row, ShardRow.clip_id, ShardRow.modality,
                   Clip.date, Clip.wall_start, Clip.start_s, Clip.end_s, Source.path, Frame.path)
            .join(Clip, Clip.id == ShardRow.clip_id).join(Source, Source.id == Clip.source_id)
            .outerjoin(Frame, Frame.id == ShardRow.frame_id)
            .where(tuple_(ShardRow.shard_id, ShardRow.row).in_(keys))):
        found[(shard_id, row)] = {"clip_id": clip_id, "modality": modality, "date": date,
                                  "wall_start": wall.isoformat() if wall else None, "source_path": source,
                                  "start_s": start, "end_s": end, "frame_path": frame}
    clip_ids = {m["clip_id"] for m in found.values() if m["frame_path"] is None}
    thumbnails = middle_frames(session, clip_ids) if clip_ids else {}
    for m in found.values():
        m["frame_path"] = m["frame_path"] or thumbnails.get(m["clip_id"])
    return found


def _resolve(session: Session, space: EmbeddingSpace, cands, exclude: set[int]) -> list[Hit]:
    keys = [(shard.id, row) for _, shard, row in cands]
    found = row_moments(session, keys)
    hits = []
    for (score, _, _), key in zip(cands, keys):
        moment = found.get(key)
        if moment is None or moment["clip_id"] in exclude:
            continue
        hits.append(Hit(score=round(score, 6), space=space.name, model_version=space.model_version, **moment))
    return hits


def search(engine: Engine, paths: Paths, *, space: str, query: np.ndarray, topk: int = 10,
           model_version: str | None = None, date_from: str | None = None,
           date_to: str | None = None, modality: str | None = None, source: str | None = None,
           skip_dates: Collection[str] = (),
           exclude_clip_ids: tuple[int, ...] = (), fires_any: Collection[int] = (),
           options=None) -> list[Hit]:
    """Cosine top-k in one space and model version.

    Args:
        engine: the memory database.
        paths: the root's layout.
        space: ``"vision"``, ``"audio"`` or ``"shared"``.
        query: ``(D,)`` vector (normalised here).
        topk: how many hits.
        model_version: ``None`` means the space's latest version.
        date_from: first date included, ``YYYY-MM-DD``.
        date_to: last date included.
        skip_dates: days left out whole (``YYYY-MM-DD``): those another version answers for
            when a query reaches this one through a map.
        modality: only rows from this sense (``"vision"``/``"audio"``).
        source: only clips whose source path (relative to the root) contains this text.
        exclude_clip_ids: clips never returned (the query's own clip).
        fires_any: dimensions of which a row must have at least one positive (in the space
            ``sae``: the neurons that must fire in a moment for it to be listed).
        options: ``memory.search`` config (:class:`SearchOptions` fields); default settings
            when ``None``.
    Returns:
        up to ``topk`` :class:`Hit`, best first; empty when the space holds nothing.
    Raises:
        ValueError: a query that is not a finite non-zero vector of the space's dimension.
    """
    options = options or SearchOptions()
    query = np.asarray(query, dtype=np.float32).reshape(-1)
    norm = float(np.linalg.norm(query))
    if not np.isfinite(norm) or norm == 0:
        raise ValueError("the query vector is zero or not finite")
    query = query / norm
    model_version = model_version or latest_version(engine, space)
    if model_version is None or topk <= 0:
        return []
    exclude = set(exclude_clip_ids)
    attempt = races = 0
    while attempt < 3:
        attempt += 1
        with Session(engine) as session:
            # One read transaction (a snapshot) for the attempt: the shard list, its rows and
            # their clips come from one state of the database, never from both sides of a
            # night replacing a shard, which SQLite gives the replaced shard's id
            # (tests/test_shard_replace.py). A file deleted after the snapshot began is the
            # retry's business below.
            session.connection().exec_driver_sql("BEGIN")
            sp = session.scalars(select(EmbeddingSpace).where(
                EmbeddingSpace.name == space, EmbeddingSpace.model_version == model_version)).first()
            if sp is None:
                return []
            if sp.dim != len(query):
                raise ValueError(f"query has {len(query)} dimensions; space {space} "
                                 f"({model_version}) has {sp.dim}")
            all_shards = complete_shards(session, sp.id)
            _release_replaced(paths, sp, all_shards)
            shards = [s for s in all_shards if (not date_from or s.date >= date_from)
                      and (not date_to or s.date <= date_to) and s.date not in skip_dates
                      and s.path not in DAMAGED]
            if not shards:
                return []
            try:
                masks = _masks(session, shards, modality, source)
                if fires_any:
                    masks = [_fires(paths, shard, fires_any, mask) for shard, mask in zip(shards, masks)]
                fetch = topk + len(exclude)
                while True:
                    cands = _candidates(paths, session, sp, all_shards, shards, masks, query,
                                        fetch, options)
                    hits = _resolve(session, sp, cands, exclude)
                    if len(hits) >= topk or len(cands) < fetch:
                        return hits[:topk]
                    fetch *= 2  # rows vanished under us: look further down the list
            except ShardError as exc:
                _damaged(exc.path, exc.reason)
                attempt -= 1  # not a race: the same list without it
            except FileNotFoundError as exc:
                # A shard replaced or forgotten between reading the list and the file; one
                # whose row still names it after that is gone for good.
                log.debug("shard went away (%s); reading the list again", exc)
                if attempt == 3:
                    session.rollback()  # out of the snapshot: is the row still there now?
                    gone = _missing_shards(session, paths, shards)
                    for path in gone:
                        _damaged(path, "file missing")
                    if not gone:
                        # No row names a missing file now: a writer replaced the shard under
                        # each attempt (a busy machine makes a reader lose the race three
                        # times running). Wait a moment for it and read the list again.
                        races += 1
                        if races > MAX_SHARD_RACES:
                            raise
                        time.sleep(0.01 * races)
                    attempt = 2
    return []


def _release_replaced(paths: Paths, space: EmbeddingSpace, shards: list[Shard]) -> None:
    """Drop this process's maps and row caches of the version's shards that are no longer in
    its list (replaced by a rerun night, or forgotten): a long-lived reader (``sleep.py
    serve``) would otherwise hold every deleted file open, its disk space never freed."""
    current = {s.path for s in shards}
    folder = shard_folder(paths, space.name, space.model_version)
    release_maps(folder, {paths.root / p for p in current})
    prefix = str(folder.relative_to(paths.root)) + "/"
    for path in [p for p in _ROW_META if p.startswith(prefix) and p not in current]:
        del _ROW_META[path]


def _damaged(path: str, reason: str) -> None:
    """Leave ``path`` out of this process's searches, saying so once."""
    if path not in DAMAGED:
        log.warning("shard %s is %s: its memories are left out of searches; run `sleep.py doctor`", path,
                    reason if reason.startswith("damaged") else f"damaged ({reason})")
    DAMAGED[path] = reason


def _missing_shards(session: Session, paths: Paths, shards: list[Shard]) -> list[str]:
    """Of ``shards``, those whose row still stands but whose file is gone."""
    standing = set(session.scalars(select(Shard.path).where(Shard.id.in_([s.id for s in shards]))))
    return [s.path for s in shards if s.path in standing and not (paths.root / s.path).exists()]


def clip_vector(engine: Engine, paths: Paths, space: str, clip_id: int,
                model_version: str | None = None) -> tuple[str, np.ndarray] | None:
    """The stored vector of a clip (its vision row first, in a shared space), for query by clip.

    Args:
        model_version: the version to read; ``None`` takes the newest version holding the clip.

    Returns:
        ``(model_version, vector)``, or ``None`` when the clip has no vector there.
    """
    with Session(engine) as session:
        query = (select(Shard, ShardRow.row, EmbeddingSpace.model_version)
                 .join(ShardRow, ShardRow.shard_id == Shard.id)
                 .join(EmbeddingSpace, EmbeddingSpace.id == Shard.space_id)
                 .where(EmbeddingSpace.name == space, Shard.complete.is_(True),
                        ShardRow.clip_id == clip_id))
        if model_version is not None:
            query = query.where(EmbeddingSpace.model_version == model_version)
        # Without a version: the newest one that holds the clip (each night's encoder is a
        # new version, so an older night's clip is searched among its own night's vectors).
        found = session.execute(query.order_by(EmbeddingSpace.id.desc(),
                                               ShardRow.modality.desc())).first()  # vision after audio
    if found is None:
        return None
    shard, row, version = found
    return version, read_rows(paths, shard, [row])[0]
