"""The model checkpoints' checksums, kept in the catalog beside the shards' (issue #18).

Checkpoints (``checkpoints/{model}/{date}.pt``) are written by the trainers, which know
nothing of the database; after each stage the night records the block sums
(:mod:`memory.integrity`) of every checkpoint file that is new or was rewritten since
(:func:`record_checkpoints`), and ``doctor`` reads each recorded file against them once
(every one with ``--read-data``): ``torch.load`` reads a flipped byte without complaint.
A file is recorded after it was renamed into place, so a row never names a torn file; a
file the night was stopped before recording is noted by the doctor and recorded by
``--repair`` (or by the next stage's end).
"""
from __future__ import annotations

import datetime as dt
import functools
import os

from sqlalchemy import DateTime, Integer, LargeBinary, Text, delete, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from core.paths import Paths
from memory import integrity
from memory.db import Base

PATTERN = "*/*.pt"  # checkpoints/{model}/{date}.pt
LATEST = "latest"  # checkpoints/{model}/latest names the newest date (models.checkpoint)


class CheckpointSum(Base):
    __tablename__ = "checkpoint_sums"

    path: Mapped[str] = mapped_column(Text, primary_key=True)  # relative to the root
    size: Mapped[int] = mapped_column(Integer)
    mtime_ns: Mapped[int] = mapped_column(Integer)  # a rewrite (a night run again) changes it
    block_sums: Mapped[bytes] = mapped_column(LargeBinary)
    recorded_at: Mapped[dt.datetime] = mapped_column(DateTime, default=dt.datetime.now)
    verified_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True, default=None)


def _files(paths: Paths) -> dict[str, os.stat_result]:
    if not paths.checkpoints.is_dir():
        return {}
    return {str(f.relative_to(paths.root)): f.stat() for f in sorted(paths.checkpoints.glob(PATTERN))
            if f.is_file() and not f.is_symlink()}


def record_checkpoints(session: Session, paths: Paths, *, leave: set[str] = frozenset()) -> list[str]:
    """Record the sums of checkpoint files new or rewritten since they were last recorded
    (the caller commits); returns their paths. ``leave``: files not to record (the doctor's,
    moving away once its repair commits)."""
    known = {row.path: row for row in session.scalars(select(CheckpointSum))}
    recorded = []
    for rel, st in _files(paths).items():
        if rel in leave:
            continue
        row = known.get(rel)
        if row is not None and (row.size, row.mtime_ns) == (st.st_size, st.st_mtime_ns):
            continue
        sums = integrity.file_sums(paths.root / rel)
        if row is None:
            session.add(CheckpointSum(path=rel, size=st.st_size, mtime_ns=st.st_mtime_ns, block_sums=sums))
        else:
            row.size, row.mtime_ns, row.block_sums = st.st_size, st.st_mtime_ns, sums
            row.recorded_at, row.verified_at = dt.datetime.now(), None
        recorded.append(rel)
    return recorded


def check(session: Session, paths: Paths, report, *, read_data: bool = False) -> list[str]:
    """Recorded checkpoints against their files (the doctor's part for checkpoints).

    Args:
        session: an open session (the caller commits on repair).
        report: the doctor's report (``problem(text, fix) -> repair now?``, ``after_commit`` and
            ``fixing``, ``notes``).
        read_data: read every recorded file, not only those no doctor has read.
    Returns:
        the paths read whole and found as recorded (the caller stamps them verified).
    """
    on_disk = _files(paths)
    verified = []
    for row in session.scalars(select(CheckpointSum).order_by(CheckpointSum.path)).all():
        what = f"checkpoint {row.path}"
        if row.path not in on_disk:
            if report.problem(f"{what}: file missing", "dropped its checksum row"):
                session.execute(delete(CheckpointSum).where(CheckpointSum.path == row.path))
            continue
        if row.verified_at is not None and not read_data:
            continue
        damage = integrity.damage(paths.root / row.path, row.block_sums)
        if damage is None:
            verified.append(row.path)
            continue
        if report.problem(f"{what}: file damaged: {damage}",
                          f"moved it to {integrity.QUARANTINE}/; that model continues from its night before"):
            session.execute(delete(CheckpointSum).where(CheckpointSum.path == row.path))
            report.after_commit(row.path, functools.partial(_quarantine, paths, row.path))
    unrecorded = sorted(set(on_disk) - set(session.scalars(select(CheckpointSum.path))) - report.fixing)
    if unrecorded:
        report.notes.append(f"{len(unrecorded)} checkpoint(s) have no checksum yet (first: {unrecorded[0]})"
                            + (": recorded them now" if report.repair else ": `doctor --repair` records them"))
        if report.repair:
            record_checkpoints(session, paths, leave=report.fixing)
    return verified


def stamp_verified(session: Session, rels: list[str]) -> None:
    now = dt.datetime.now()
    for rel in rels:
        session.execute(update(CheckpointSum).where(CheckpointSum.path == rel).values(verified_at=now))


def _quarantine(paths: Paths, rel: str) -> None:
    integrity.quarantine(paths, rel)
    _point_latest_back(paths, paths.root / rel)


def _point_latest_back(paths: Paths, removed) -> None:
    """If the model's ``latest`` pointer names the checkpoint just moved aside, point it at
    the newest one left (or remove it when none is), as :mod:`models.checkpoint` writes it:
    queries and the next night then use the model of the night before."""
    folder = removed.parent
    pointer = folder / LATEST
    # Read through the vault (as it is, when plain: models.checkpoint keeps it a plain date).
    if not pointer.exists() or paths.vault.read_text(pointer).strip() != removed.stem:
        return
    left = sorted(f.stem for f in folder.glob("*.pt"))
    if left:
        from core.atomic import atomic_write_text

        atomic_write_text(pointer, left[-1] + "\n")
    else:
        pointer.unlink()
