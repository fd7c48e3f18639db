"""Deciding what a (re)run does with each file: pure, so every case is tested as data.

Sources are keyed by content hash. For each file now in ``data/raw/{date}/``:

* same path, same hash, same output settings as a stored source -> unchanged (a
  ``removed`` source whose file came back is revived);
* a stored source whose file vanished and whose hash turns up under a new name -> renamed
  (its row follows the file; nothing is decoded again);
* the same bytes as another file of the day -> ignored as a duplicate;
* anything else -> extracted; it replaces the row at its path (a changed file) and its
  own older row (new output settings). A failed file replaces only a failed row: when a
  good recording is overwritten by a broken one, the memories of the good one are kept.
Stored sources whose file is gone become ``removed`` (their clips are kept); failed rows
whose file is gone are dropped.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Known:
    """A stored source, as the planner sees it."""

    id: int
    path: str
    content_hash: str
    status: str
    settings: str | None


@dataclass(frozen=True)
class Found:
    """A file now in the raw folder (``reason`` set when it could not be read)."""

    path: str
    content_hash: str | None
    reason: str | None = None


@dataclass
class Plan:
    unchanged: list[int] = field(default_factory=list)  # source ids
    revive: list[int] = field(default_factory=list)
    renamed: list[tuple[int, str]] = field(default_factory=list)  # (id, new path)
    extract: list[tuple[Found, list[int]]] = field(default_factory=list)  # (file, replaces)
    failed: list[tuple[Found, list[int]]] = field(default_factory=list)
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # (path, same as path)
    removed: list[int] = field(default_factory=list)
    dropped: list[int] = field(default_factory=list)


def plan_day(found: list[Found], known: list[Known], settings: str) -> Plan:
    """Decide, for one night, what to do with each file and each stored source.

    Args:
        found: the files in the raw folder (paths relative to the root).
        known: the night's stored sources.
        settings: fingerprint of the settings that shape outputs; a source stored with
            other settings is extracted again.
    Returns:
        the :class:`Plan`.
    """
    plan = Plan()
    by_path = {k.path: k for k in known}
    present = {f.path for f in found}
    kept = {k.content_hash: k for k in known if k.status in ("ok", "removed")}
    # Hash -> the path that owns it today; files already stored under their path go first
    # so a copy sorted before the original is the one called a duplicate.
    owner: dict[str, str] = {}
    for f in found:
        old = by_path.get(f.path)
        if f.content_hash and old and old.content_hash == f.content_hash and old.status != "failed":
            owner.setdefault(f.content_hash, f.path)
    claimed: set[int] = set()

    for f in sorted(found, key=lambda f: f.path):
        old = by_path.get(f.path)
        if f.reason is not None or f.content_hash is None:
            replaces = [old.id] if old and old.status == "failed" else []
            plan.failed.append((f, replaces))
            if old and old.status != "failed":
                claimed.add(old.id)  # its memories stay; the file at its path is broken now
            continue
        first = owner.setdefault(f.content_hash, f.path)
        if first != f.path:
            plan.duplicates.append((f.path, first))
            continue
        if old and old.content_hash == f.content_hash and old.status != "failed":
            claimed.add(old.id)
            if old.settings == settings:
                (plan.revive if old.status == "removed" else plan.unchanged).append(old.id)
            else:
                plan.extract.append((f, [old.id]))
            continue
        twin = kept.get(f.content_hash)
        if twin and twin.path not in present and twin.id not in claimed and twin.settings == settings:
            claimed.add(twin.id)
            plan.renamed.append((twin.id, f.path))
            continue
        replaces = [old.id] if old else []
        if twin and twin.path not in present and twin.id not in claimed:
            replaces.append(twin.id)  # same bytes under a new name, new settings
        claimed.update(replaces)
        plan.extract.append((f, replaces))

    for k in known:
        if k.path in present or k.id in claimed:
            continue
        if k.status == "ok":
            plan.removed.append(k.id)
        elif k.status == "failed":
            plan.dropped.append(k.id)
    return plan
