"""Neurons that keep their identity across nights: stable ids, user names, and what fires them.

The sparse autoencoder is retrained every night, so latent 40 of ``sae@2026-03-02`` need
not be latent 40 of ``sae@2026-03-03``. Each night the ``sae`` stage matches tonight's
latents to last night's (by decoder cosine, :mod:`models.sae.identity`) and records here,
per version, which stable neuron every latent is (:class:`NeuronLatent`). A neuron keeps
its id, and the name a person gave it, for as long as it is matched night after night; an
unmatched latent is a neuron born tonight, an unmatched neuron of last night is lost (its
row and name stay, so ``neuron show`` can still say when it was last seen).

Names live here, in the memory, not in the config: they are the user's data.

Versions written before identities existed have no rows; there a neuron's id is its
latent index (:func:`latents_of` falls back to that), which is also how the first night
numbers its neurons, so the numbers a person saw in an older report keep their meaning.
"""
from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import (
    DateTime,
    Engine,
    Float,
    ForeignKey,
    Integer,
    String,
    delete,
    func,
    select,
)
from sqlalchemy.orm import Mapped, Session, mapped_column

from memory.catalog import EmbeddingSpace, complete_shards
from memory.db import Base
from memory.shards import open_shard

SPACE = "sae"
# A name must not read as an id (``--neuron 40`` is neuron 40), and stays short enough for a table.
_NAME = re.compile(r"^(?!\d+$)[^\x00-\x1f,]{1,64}$")


class Neuron(Base):
    __tablename__ = "neurons"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    name: Mapped[str | None] = mapped_column(String(64), unique=True, nullable=True)
    born_version: Mapped[str] = mapped_column(String(128))
    # The newest version whose latents include this neuron (lost when that is not the newest).
    last_version: Mapped[str] = mapped_column(String(128))
    named_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)


class NeuronLatent(Base):
    """Latent ``latent`` of ``model_version`` is neuron ``neuron_id``."""

    __tablename__ = "neuron_latents"

    model_version: Mapped[str] = mapped_column(String(128), primary_key=True)
    latent: Mapped[int] = mapped_column(Integer, primary_key=True)
    neuron_id: Mapped[int] = mapped_column(ForeignKey("neurons.id", ondelete="CASCADE"), index=True)
    # Decoder cosine with the latent it was matched to in the previous version; None: born here.
    match_cosine: Mapped[float | None] = mapped_column(Float, nullable=True)


class NeuronError(ValueError):
    """A neuron that does not exist, or a name that cannot be given; the message says which."""


@dataclass
class IdentityReport:
    """What :func:`assign_identities` did, for the report."""

    version: str
    previous_version: str | None
    kept: list[dict] = field(default_factory=list)  # {"id", "name", "latent", "previous_latent", "cosine"}
    born: list[dict] = field(default_factory=list)  # {"id", "latent"}
    lost: list[dict] = field(default_factory=list)  # {"id", "name", "previous_latent"}

    def as_dict(self, listed: int = 12) -> dict:
        cosines = [k["cosine"] for k in self.kept]
        named_kept = [k for k in self.kept if k["name"]]
        return {
            "version": self.version, "previous_version": self.previous_version,
            "kept": len(self.kept), "born": len(self.born), "lost": len(self.lost),
            "match_cosine": {"mean": round(float(np.mean(cosines)), 4), "min": round(float(np.min(cosines)), 4)}
            if cosines else None,
            # Named neurons first: those are the ones a person follows.
            "kept_listed": (named_kept + sorted((k for k in self.kept if not k["name"]),
                                                key=lambda k: k["cosine"]))[:listed],
            "born_listed": self.born[:listed], "lost_listed": self.lost[:listed],
        }


def _rows(session: Session, version: str) -> dict[int, NeuronLatent]:
    return {r.latent: r for r in session.scalars(select(NeuronLatent).where(NeuronLatent.model_version == version))}


def _ensure_bootstrap(session: Session, version: str, n_latents: int) -> None:
    """A version from before identities: neuron i is its latent i (what its report showed)."""
    if _rows(session, version):
        return
    for latent in range(n_latents):
        if session.get(Neuron, latent) is None:
            session.add(Neuron(id=latent, born_version=version, last_version=version))
        session.add(NeuronLatent(model_version=version, latent=latent, neuron_id=latent, match_cosine=None))
    session.flush()


def assign_identities(engine: Engine, version: str, n_latents: int, matches: list[tuple[int, int, float]],
                      previous_version: str | None, previous_latents: int = 0) -> IdentityReport:
    """Record which neuron each of ``version``'s latents is; safe to run twice.

    Args:
        engine: the memory database.
        version: tonight's ``sae@D``.
        n_latents: its number of latents.
        matches: ``(latent, previous_latent, cosine)`` pairs kept by the matching; every
            other latent is a neuron born tonight.
        previous_version: the version matched against (``None``: the first night).
        previous_latents: that version's number of latents (to number it when it predates
            identities).
    Returns:
        the neurons kept (with cosine), born and lost.
    """
    report = IdentityReport(version, previous_version)
    with Session(engine) as session, session.begin():
        # A rerun of the night: reuse the ids its first run gave to the neurons born here.
        earlier = {latent: (r.neuron_id, r.match_cosine) for latent, r in _rows(session, version).items()}
        before: dict[int, int] = {}
        if previous_version is not None:
            _ensure_bootstrap(session, previous_version, previous_latents)
            before = {latent: r.neuron_id for latent, r in _rows(session, previous_version).items()}
        session.execute(delete(NeuronLatent).where(NeuronLatent.model_version == version),
                        execution_options={"synchronize_session": False})
        session.expunge_all()
        # First night: neuron i is latent i, as the reports before identities numbered them.
        first_night = previous_version is None and not earlier
        next_id = int(session.scalar(select(func.max(Neuron.id))) or -1) + 1
        if first_night:
            next_id = max(next_id, n_latents)
        matched = {latent: (prev, cos) for latent, prev, cos in matches if prev in before}
        taken: set[int] = set()
        for latent in range(n_latents):
            cosine = None
            if latent in matched:
                neuron_id, cosine = before[matched[latent][0]], round(float(matched[latent][1]), 4)
            elif latent in earlier and earlier[latent][1] is None and earlier[latent][0] not in taken:
                neuron_id = earlier[latent][0]
            elif first_night and session.get(Neuron, latent) is None:
                neuron_id = latent
            else:
                while session.get(Neuron, next_id) is not None:
                    next_id += 1
                neuron_id, next_id = next_id, next_id + 1
            taken.add(neuron_id)
            neuron = session.get(Neuron, neuron_id)
            if neuron is None:
                neuron = Neuron(id=neuron_id, born_version=version, last_version=version)
                session.add(neuron)
            else:
                neuron.last_version = version
            session.add(NeuronLatent(model_version=version, latent=latent, neuron_id=neuron_id, match_cosine=cosine))
            session.flush()
            if cosine is None:
                report.born.append({"id": neuron_id, "latent": latent})
            else:
                report.kept.append({"id": neuron_id, "name": neuron.name, "latent": latent,
                                    "previous_latent": matched[latent][0], "cosine": cosine})
        # Ids a first run of this night gave that this run did not: gone, unless named.
        for neuron_id, cosine in earlier.values():
            if neuron_id not in taken and cosine is None:
                orphan = session.get(Neuron, neuron_id)
                if orphan is not None and orphan.name is None and orphan.born_version == version:
                    session.delete(orphan)
        for prev, neuron_id in sorted(before.items()):
            if neuron_id not in taken:
                lost = session.get(Neuron, neuron_id)
                report.lost.append({"id": neuron_id, "name": lost.name if lost else None, "previous_latent": prev})
    return report


def latents_of(engine: Engine, version: str) -> dict[int, int]:
    """``{neuron id: latent}`` of ``version``; empty for a version without identities."""
    with Session(engine) as session:
        return {r.neuron_id: r.latent for r in _rows(session, version).values()}


def _id_of(session: Session, given: int | str) -> int:
    """The id a person means: a number is an id, anything else a name.

    Raises:
        NeuronError: no neuron has that name.
    """
    if isinstance(given, str) and not given.strip().isdigit():
        neuron_id = session.scalar(select(Neuron.id).where(Neuron.name == given.strip()))
        if neuron_id is None:
            raise NeuronError(f"no neuron is named {given!r} (sleep.py neuron list shows the names)")
        return neuron_id
    return int(given)


def resolve_neurons(engine: Engine, version: str, dim: int, names: list[int | str]) -> list[tuple[int | str, int]]:
    """Each neuron (an id, or a name) with its latent in ``version``.

    Raises:
        NeuronError: an unknown name, or a neuron that is not in this version (lost, or born later).
    """
    mapping = latents_of(engine, version)
    out = []
    with Session(engine) as session:
        for given in names:
            neuron_id = _id_of(session, given)
            if mapping:
                latent = mapping.get(neuron_id)
                if latent is None:
                    known = session.get(Neuron, neuron_id)
                    if known is None:
                        raise NeuronError(f"no neuron {neuron_id}")
                    raise NeuronError(f"neuron {neuron_id}{f' ({known.name})' if known.name else ''} is not in "
                                      f"{version}: last seen in {known.last_version}")
            else:  # a version from before identities: ids are latent indices
                latent = neuron_id
                if not 0 <= latent < dim:
                    raise NeuronError(f"neuron {neuron_id}: {version} has neurons 0 to {dim - 1}")
            out.append((given, latent))
    return out


def find_neuron(engine: Engine, given: int | str) -> Neuron:
    """The neuron with this id or name.

    Raises:
        NeuronError: none.
    """
    with Session(engine) as session:
        neuron_id = _id_of(session, given)
        neuron = session.get(Neuron, neuron_id)
        if neuron is None:
            raise NeuronError(f"no neuron {neuron_id}")
        session.expunge(neuron)
        return neuron


def name_neuron(engine: Engine, given: int | str, name: str | None) -> Neuron:
    """Give neuron ``given`` the name ``name`` (``None`` removes it).

    Raises:
        NeuronError: no such neuron, a name that reads as a number or holds a comma or a
            control character, or a name another neuron has.
    """
    if name is not None:
        name = name.strip()
        if not _NAME.match(name):
            raise NeuronError(f"{name!r} cannot be a neuron name: 1 to 64 characters, not only digits, no comma")
    target = find_neuron(engine, given)
    with Session(engine) as session, session.begin():
        if name is not None:
            holder = session.scalars(select(Neuron).where(Neuron.name == name, Neuron.id != target.id)).first()
            if holder is not None:
                raise NeuronError(f"neuron {holder.id} is already named {name!r} (sleep.py neuron unname {holder.id})")
        neuron = session.get(Neuron, target.id)
        neuron.name = name
        neuron.named_at = dt.datetime.now() if name is not None else None
    return find_neuron(engine, target.id)


def history(engine: Engine, neuron_id: int) -> list[dict]:
    """Every version the neuron is in, oldest first: ``{"version", "latent", "match_cosine"}``."""
    with Session(engine) as session:
        rows = session.scalars(select(NeuronLatent).where(NeuronLatent.neuron_id == neuron_id)).all()
    return sorted(({"version": r.model_version, "latent": r.latent, "match_cosine": r.match_cosine} for r in rows),
                  key=lambda r: r["version"].partition("@")[2])


def names(engine: Engine) -> dict[int, str]:
    with Session(engine) as session:
        return dict(session.execute(select(Neuron.id, Neuron.name).where(Neuron.name.is_not(None))).all())


@dataclass
class LatentStats:
    """How often each latent fires, and its strongest rows (per shard row, not yet clips)."""

    rows: int
    fires: np.ndarray  # (latents,) rows where it fires
    top: dict[int, list[tuple[float, int, int]]]  # latent -> [(activation, shard id, row)] best first


def latent_stats(engine: Engine, paths, version: str, *, date_from: str | None = None, date_to: str | None = None,
                 latents: list[int] | None = None, moments: int = 5, chunk_rows: int = 8192) -> LatentStats | None:
    """Fire counts and top rows of ``version``'s latents over its complete shards, read in
    chunks from the memory maps (a year of memory never sits in RAM at once).

    Activations are the stored, L2-normalised codes: a latent's value is its share of the
    moment's trace. ``None`` when the version holds nothing.
    """
    with Session(engine) as session:
        space = session.scalars(select(EmbeddingSpace).where(EmbeddingSpace.name == SPACE,
                                                             EmbeddingSpace.model_version == version)).first()
        if space is None:
            return None
        shards = [s for s in complete_shards(session, space.id)
                  if (not date_from or s.date >= date_from) and (not date_to or s.date <= date_to)]
    cols = np.arange(space.dim) if latents is None else np.asarray(latents, dtype=np.int64)
    keep = moments * 4  # a few spare rows per latent: a clip has a row per sense
    fires = np.zeros(len(cols), np.int64)
    best_value = np.full((keep, len(cols)), -np.inf, np.float32)
    best_where = np.zeros((keep, len(cols)), np.int64)  # shard position << 32 | row
    total = 0
    for position, shard in enumerate(shards):
        matrix = open_shard(paths, shard)
        for start in range(0, len(matrix), chunk_rows):
            block = np.asarray(matrix[start:start + chunk_rows][:, cols], dtype=np.float32)
            total += len(block)
            fires += (block > 0).sum(axis=0)
            values = np.concatenate([best_value, block])
            where = np.concatenate([best_where, np.broadcast_to(
                ((position << 32) | (start + np.arange(len(block))))[:, None], block.shape)])
            top = np.argpartition(-values, keep - 1, axis=0)[:keep]
            best_value, best_where = np.take_along_axis(values, top, 0), np.take_along_axis(where, top, 0)
    order = np.argsort(-best_value, axis=0, kind="stable")
    best_value, best_where = np.take_along_axis(best_value, order, 0), np.take_along_axis(best_where, order, 0)
    top_rows = {int(c): [(float(v), shards[int(w >> 32)].id, int(w & 0xFFFFFFFF))
                         for v, w in zip(best_value[:, j], best_where[:, j]) if v > 0]
                for j, c in enumerate(cols.tolist())}
    return LatentStats(total, fires, top_rows)


def moments(engine: Engine, rows: list[tuple[int, int]]) -> dict[tuple[int, int], dict]:
    """What each ``(shard id, row)`` is: its clip, day, time, recording and a frame
    (:func:`memory.search.row_moments`)."""
    from memory.search import row_moments

    with Session(engine) as session:
        return row_moments(session, rows)
