"""Checkpoint files shared by every nightly-trained model.

Layout: ``checkpoints/{model}/{date}.pt`` and ``checkpoints/{model}/latest`` (a text file
naming the newest date). Both are written atomically; with ``memory.encryption: on`` the
``.pt`` files are sealed (:mod:`core.vault`), while ``latest`` stays plain: it holds a date
only. A night continues from the newest checkpoint *before* its own date, so running a
night twice starts from the same weights. A checkpoint that exists but cannot be read is an
error: the night stops rather than silently starting from scratch (ijepa's
``load_checkpoint`` swallows it; we do not).
"""
from __future__ import annotations

import datetime as dt
import io
import logging
from pathlib import Path

import torch

from core.atomic import atomic_write_text
from core.errors import SleepError
from core.keys import MasterKeyError
from core.paths import make_private_dir
from core.sealed import is_sealed
from core.vault import vault_of, write_file

log = logging.getLogger(__name__)
LATEST = "latest"


class CheckpointError(SleepError):
    """A checkpoint is missing, unreadable or does not fit the configured network."""


def checkpoint_path(folder: Path, date: dt.date) -> Path:
    return folder / f"{date.isoformat()}.pt"


def _dates(folder: Path) -> list[dt.date]:
    found = []
    if folder.is_dir():
        for path in folder.glob("*.pt"):
            try:
                found.append(dt.date.fromisoformat(path.stem))
            except ValueError:
                continue
    return sorted(found)


def previous_checkpoint(folder: Path, before: dt.date) -> Path | None:
    """The newest ``{date}.pt`` in ``folder`` dated strictly before ``before``; None if none."""
    earlier = [d for d in _dates(folder) if d < before]
    return checkpoint_path(folder, earlier[-1]) if earlier else None


def latest_checkpoint(folder: Path) -> Path | None:
    """The checkpoint the ``latest`` pointer names; ``None`` when nothing was trained yet.

    Raises:
        CheckpointError: the pointer names a file that is not there.
    """
    pointer = folder / LATEST
    if not pointer.exists():
        return None
    name = pointer.read_text().strip()
    try:
        path = checkpoint_path(folder, dt.date.fromisoformat(name))
    except ValueError:
        raise CheckpointError(f"{pointer}: expected a date, found {name[:40]!r}") from None
    if not path.exists():
        raise CheckpointError(f"{pointer} names {path.name}, which does not exist")
    return path


def save_checkpoint(folder: Path, date: dt.date, state: dict) -> Path:
    """Write ``state`` as ``{folder}/{date}.pt`` atomically and move ``latest`` forward.

    The pointer never moves backwards: re-running an older night keeps the newest model
    as the one queries use.

    Returns:
        the checkpoint's path.
    """
    make_private_dir(folder)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with buffer.getbuffer() as data:  # a view: a large checkpoint is not copied once more
        path = write_file(checkpoint_path(folder, date), data)
    current = None
    pointer = folder / LATEST
    if pointer.exists():
        try:
            current = dt.date.fromisoformat(pointer.read_text().strip())
        except ValueError:
            current = None
    if current is None or current <= date:
        atomic_write_text(pointer, date.isoformat() + "\n")
    log.info("checkpoint: %s", path)
    return path


def load_checkpoint(path: Path, required: tuple[str, ...] = ()) -> dict:
    """Read a checkpoint onto the CPU (decrypted as it is read when it is sealed).

    Args:
        path: the ``.pt`` file.
        required: keys the dict must hold.
    Returns:
        the checkpoint dict.
    Raises:
        CheckpointError: missing, unreadable (truncated, corrupt, a sealed file damaged) or
            lacking a key.
        MasterKeyError: sealed, and this process has no key for its memory.
    """
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        state = _read_state(path)
    except MasterKeyError:
        raise
    except Exception as exc:  # torch raises several types for a damaged zip/pickle
        raise CheckpointError(f"{path}: cannot read checkpoint ({type(exc).__name__}: {exc}); "
                              "move it aside to start this model from its previous night") from None
    missing = [k for k in required if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {', '.join(missing)}")
    return state


def _read_state(path: Path):
    """``torch.load`` of ``path``: by its name when it is plain (torch reads the zip itself, as
    before), through the vault when it is sealed (only the chunks torch reads are decrypted)."""
    if not is_sealed(path):
        return torch.load(path, map_location="cpu", weights_only=True)
    with vault_of(path).open(path) as fh:
        return torch.load(fh, map_location="cpu", weights_only=True)


def restore_training(resume: dict | None, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Put last night's weights and optimizer moments into a model and optimizer built tonight.

    Args:
        resume: a checkpoint dict with ``model``, ``optimizer`` and ``step``, or ``None``.
        model, optimizer: built from tonight's config (the stage has checked the shapes fit).
    Returns:
        the global step to count on from (0 when ``resume`` is ``None``).
    Raises:
        CheckpointError: the checkpoint lacks a key or its weights do not load.
    """
    if resume is None:
        return 0
    try:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        return int(resume["step"])
    except (KeyError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"last night's checkpoint does not load ({type(exc).__name__}: {exc})") from None
