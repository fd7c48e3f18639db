"""Episodic memory: the store every night writes to and every query reads.

The only package that speaks SQL or opens embedding shards. It holds:

- the database (:mod:`memory.db`): sources, clips, frames and audio segments
  (:mod:`memory.schema`, written by :mod:`memory.sources`), which embedding shards exist
  (:mod:`memory.catalog`), and the stage ledger (:mod:`memory.ledger`);
- the vectors, one shard file per (space, model version, night), whose on-disk format
  belongs to :mod:`memory.shards` alone; :func:`write_embeddings` and
  :func:`load_vectors` store and read them, :func:`search` finds the nearest ones;
- the care of both: :func:`forget_day`, :func:`apply_retention` and :func:`doctor`.

What other packages use is re-exported here. Importing the package loads neither torch
nor FAISS (the search imports them when it first needs them), but it does load NumPy
and SQLAlchemy.
"""
# Eager imports, not a lazy ``__getattr__``: ``search`` and ``doctor`` are also the names
# of submodules, and loading a submodule later would rebind them to the module.
from memory import ledger
from memory.catalog import latest_version, space_dim, spaces
from memory.db import make_sessionmaker, open_database
from memory.doctor import doctor
from memory.episodes import (
    NewEpisode,
    NewHighlight,
    TimelineClip,
    day_episodes,
    day_highlights,
    episode_of,
    save_episodes,
    timeline,
)
from memory.forget import forget_day, plan_forget
from memory.journal import (
    Entry,
    NearbyClip,
    NewEntry,
    all_entries,
    clips_near,
    day_entries,
    load_entry_vectors,
    search_entries,
    sync_day,
    unembedded,
    write_entry_vectors,
)
from memory.keepsakes import Keepsake, day_keepsakes, keepsake_days
from memory.media import (
    FrameRef,
    SegmentRef,
    day_frames,
    day_segments,
    earlier_frame_ids,
    earlier_segments,
    frame_paths,
    middle_frames,
)
from memory.uses import by_last_use, record_use
from memory.neurons import (
    NeuronError,
    assign_identities,
    find_neuron,
    latent_stats,
    name_neuron,
    resolve_neurons,
)
from memory.neurons import history as neuron_history
from memory.neurons import latents_of as neuron_latents
from memory.neurons import moments as shard_row_moments
from memory.neurons import names as neuron_names
from memory.retention import apply_retention
from memory.schema import Source
from memory.search import Hit, SearchOptions, clip_vector, search
from memory.shards import ShardError
from memory.sources import (
    ClipRecord,
    day_sources,
    day_totals,
    save_source,
    source_counts,
    update_sources,
)
from memory.supersede import drop_superseded
from memory.store import EmbeddingRow, ShardInfo, load_vectors, write_embeddings
from memory.versions import (
    activate_if_complete,
    active_version,
    coverage,
    covered_days,
    day_clips,
    days_to_reembed,
    record_day,
    version_table,
)

__all__ = [
    # the database
    "open_database", "make_sessionmaker", "ledger",
    # a night's recordings: what ingest writes and the model stages read
    "Source", "ClipRecord", "save_source", "update_sources", "day_sources", "day_totals",
    "source_counts", "FrameRef", "SegmentRef", "day_frames", "day_segments",
    "earlier_frame_ids", "earlier_segments", "frame_paths", "middle_frames",
    # what each clip keeps for re-embedding after retention
    "Keepsake", "day_keepsakes", "keepsake_days",
    # vectors
    "EmbeddingRow", "ShardInfo", "ShardError", "write_embeddings", "load_vectors",
    "latest_version", "space_dim", "spaces",
    # versions: which one queries read, and how much of the memory each covers
    "by_last_use", "record_use",
    "active_version", "activate_if_complete", "coverage", "covered_days", "version_table", "days_to_reembed",
    "day_clips", "record_day", "drop_superseded",
    # memory-trace neurons: stable ids across nights, and the names people give them
    "NeuronError", "assign_identities", "neuron_latents", "resolve_neurons", "find_neuron", "name_neuron",
    "neuron_history", "neuron_names", "latent_stats", "shard_row_moments",
    # search
    "search", "SearchOptions", "Hit", "clip_vector",
    # the journal: entries, their vectors, the clips near each
    "Entry", "NewEntry", "NearbyClip", "sync_day", "day_entries", "all_entries", "write_entry_vectors",
    "load_entry_vectors", "search_entries", "unembedded", "clips_near",
    # episodes and highlights of a day
    "TimelineClip", "NewEpisode", "NewHighlight", "timeline", "save_episodes", "day_episodes",
    "day_highlights", "episode_of",
    # care
    "forget_day", "plan_forget", "apply_retention", "doctor",
]
