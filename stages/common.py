"""What the stages share: one resume policy, the held-out split, the night's seed, version names.

The resume policy (:func:`resume_state`): a night continues the newest checkpoint dated
before it, so running a night twice starts from the same weights. When tonight's config
gives the network another shape, the night starts the model afresh and says why: a warning
in the log and ``restart_reason`` in the stage's result, which the report shows. A
checkpoint that exists but cannot be read is an error (:class:`CheckpointError`), never a
silent restart from scratch (STYLE.md, "Concrete things to copy" 5).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from core.errors import UsageError
from core.paths import Paths
from memory.keepsakes import day_keepsakes, keepsake_days
from memory.media import earlier_frame_ids_by_day, frame_paths
from models.batches import replay_by_day
from models.checkpoint import (
    CheckpointError,
    checkpoint_path,
    latest_checkpoint,
    load_checkpoint,
    previous_checkpoint,
    save_checkpoint,
)
from stages import Night, stage

log = logging.getLogger(__name__)


# --- version names ---------------------------------------------------------------------------

def model_version(model: str, date: dt.date | str) -> str:
    """``"{model}@{date}"``, the tag stored beside every embedding a model wrote."""
    return f"{model}@{date if isinstance(date, str) else date.isoformat()}"


def model_of(stage_name: str) -> str:
    """The model a stage trains (``"vision"`` -> ``"jepa"``), from :data:`stages.STAGES`.

    Raises:
        KeyError: no such stage, or it trains no model.
    """
    model = stage(stage_name).model
    if model is None:
        raise KeyError(f"stage {stage_name!r} trains no model")
    return model


def checkpoint_folder(paths: Paths, stage_name: str) -> Path:
    """``checkpoints/{model}``: where a stage's model is saved night by night."""
    return paths.checkpoints / model_of(stage_name)


def version_checkpoint(paths: Paths, stage_name: str, version: str | None = None) -> Path:
    """The checkpoint that wrote ``version`` of the stage's spaces (``None``: the newest one).

    Queries embed their example with the checkpoint of the version they search, so that a
    query vector and the stored vectors always come from the same network.

    Raises:
        UsageError: nothing trained yet, a version of another model, or its checkpoint is gone.
    """
    folder = checkpoint_folder(paths, stage_name)
    if version is None:
        newest = latest_checkpoint(folder)
        if newest is None:
            raise UsageError(f"{folder}: no {stage_name} model yet; run a night first")
        return newest
    model, _, date = version.partition("@")
    try:
        if model != model_of(stage_name):
            raise ValueError(model)
        path = checkpoint_path(folder, dt.date.fromisoformat(date))
    except ValueError:
        raise UsageError(f"{version}: not a version of {model_of(stage_name)} (expected {model_of(stage_name)}@DATE)") from None
    if not path.is_file():
        raise UsageError(f"{path}: the checkpoint of {version} is gone (memory.retention.checkpoint_days?)")
    return path


def tonight_version(night: Night, stage_name: str) -> str:
    """The model version a stage wrote tonight: what it returned this run, else the version it
    writes for this date (``--only sae`` on an earlier night reads that night's vectors, not
    the newest night's)."""
    returned = (night.results.get(stage_name) or {}).get("model_version")
    return returned or model_version(model_of(stage_name), night.date)


# --- seeds and the held-out split ------------------------------------------------------------

def night_seed(night: Night) -> int:
    """One seed per (``runtime.seed``, date): the same night draws the same crops and batches."""
    return night.cfg.runtime.seed * 1_000_003 + night.date.toordinal()


def is_heldout(key: int, fraction: float, seed: int) -> bool:
    """Whether a clip (or frame) is kept out of training to measure on (stable per key and seed).

    A hash of the id, not a draw over the day's list, so that the audio, alignment and
    dictionary stages hold out the same clips although they see different sets.
    """
    digest = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < fraction


def heldout_mask(keys: Iterable[int], fraction: float, seed: int) -> np.ndarray:
    """:func:`is_heldout` of every key, as a boolean array."""
    return np.array([is_heldout(int(k), fraction, seed) for k in keys], dtype=bool)


def heldout_positions(n: int, fraction: float, seed: int) -> np.ndarray:
    """Sorted positions of ``n`` items drawn out of training (the vision stage's frames).

    At least one when ``fraction > 0`` and ``n >= 4``; never all of them (training needs one).
    """
    k = int(round(n * fraction))
    if fraction > 0 and n >= 4:
        k = max(k, 1)
    k = min(k, n - 1)
    rng = np.random.default_rng([seed, 0x4E1D])
    return np.sort(rng.choice(n, size=k, replace=False)) if k > 0 else np.zeros(0, dtype=int)


def train_and_measure(held: np.ndarray, minimum: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Rows to train on and rows to measure on, from a held-out mask.

    Too few rows outside the held-out set: train on all. Too few held out: measure on the
    training rows (the stage's result says so).
    """
    train = ~held if (~held).sum() >= minimum else np.ones(len(held), bool)
    return train, held if held.sum() >= minimum else train


# --- replay of earlier days ------------------------------------------------------------------

def replay_frame_files(night: Night, max_frames: int, seed: int) -> tuple[list[str], list[str], dict]:
    """A seeded sample of earlier days' frames, the same number from every day, as files on disk
    (what the vision and dream stages replay).

    Frame ids are drawn first (cheap even for a long memory), then their paths looked up. A
    day whose frames retention removed replays its clips' keepsake keyframes instead
    (``memory.keepsakes``), and so does a drawn frame whose file is gone.

    Returns:
        ``(paths, days, counts)``: paths relative to the root, the day of each, and
        ``{"pool", "from_keepsakes", "missing"}`` (earlier frames and keyframes to draw from,
        keyframes used, drawn files found neither way).
    """
    root = night.paths.root
    paths: list[str] = []
    days: list[str] = []
    counts = {"pool": 0, "from_keepsakes": 0, "missing": 0}
    if max_frames == 0:
        return paths, days, counts
    with night.Session() as session:
        frames = earlier_frame_ids_by_day(session, night.day)
        keyframes = {day: [k.keyframe for k in day_keepsakes(session, day) if k.keyframe]
                     for day in keepsake_days(session) if day < night.day}
        pools: dict[str, list] = {**{d: k for d, k in keyframes.items() if d not in frames}, **frames}
        counts["pool"] = sum(len(v) for v in pools.values())
        for day, items in replay_by_day(pools, max_frames, seed).items():
            drawn = frame_paths(session, items) if day in frames else items
            found = [p for p in drawn if (root / p).is_file()]
            lost = len(drawn) - len(found)
            if lost and day in frames and keyframes.get(day):
                stand_ins = [p for p in replay_by_day({day: keyframes[day]}, lost, seed)[day]
                             if (root / p).is_file()]
                found += stand_ins
                counts["from_keepsakes"] += len(stand_ins)
                lost -= len(stand_ins)
            elif day not in frames:
                counts["from_keepsakes"] += len(found)
            counts["missing"] += lost
            paths += found
            days += [day] * len(found)
    return paths, days, counts


# --- the resume policy -----------------------------------------------------------------------

@dataclass(frozen=True)
class Resume:
    """Where tonight's training starts.

    Attributes:
        checkpoint: last night's checkpoint dict when tonight continues it, else ``None``.
        resumed_from: its date (the file's stem), or ``None``.
        restart_reason: why tonight starts afresh although an earlier checkpoint exists.
    """

    checkpoint: dict | None = None
    resumed_from: str | None = None
    restart_reason: str | None = None

    def as_result(self) -> dict:
        """The stage-result fields the report reads."""
        return {"resumed_from": self.resumed_from, "restart_reason": self.restart_reason}


def _plain(value):
    # A checkpoint's config may hold lists where tonight's holds tuples (mode="json" dumps).
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def saved_architecture(checkpoint: dict, keys: Iterable[str], source: Path,
                       defaults: dict | None = None) -> dict:
    """The architecture a checkpoint was trained with: each key from the checkpoint's own
    top level (the input sizes a stage records, e.g. ``n_inputs``) or else its ``config``,
    or else ``defaults`` (a setting added later: what every older checkpoint was trained with).

    Raises:
        CheckpointError: the checkpoint records none of these.
    """
    config = checkpoint.get("config") or {}
    defaults = defaults or {}
    saved = {}
    for key in keys:
        if key in checkpoint:
            saved[key] = checkpoint[key]
        elif key in config:
            saved[key] = config[key]
        elif key in defaults:
            saved[key] = defaults[key]
        else:
            raise CheckpointError(f"{source}: checkpoint does not record {key}")
    return saved


def resume_state(night: Night, model: str, architecture: dict, required: tuple[str, ...] = (),
                 defaults: dict | None = None) -> Resume:
    """Decide whether tonight continues the last checkpoint of ``model`` or starts afresh.

    Args:
        night: tonight (its date and ``paths.checkpoints``).
        model: the checkpoint folder's name (``"jepa"``, ``"cpc"``, ...).
        architecture: tonight's shape-relevant values, e.g. ``{"n_inputs": 64, "latents":
            512}``; each key is looked up in the checkpoint as :func:`saved_architecture` does.
        required: keys the checkpoint must hold to be continued (``"model"``, ``"step"``...).
        defaults: for architecture keys added after checkpoints were first written, the value
            an older checkpoint that does not record them was trained with.
    Returns:
        a :class:`Resume`: the checkpoint to continue, or none with the reason when the
        shape changed (also logged as a warning); all ``None`` on the first night.
    Raises:
        CheckpointError: the earlier checkpoint is unreadable or lacks a required key.
    """
    previous = previous_checkpoint(night.paths.checkpoints / model, night.date)
    if previous is None:
        log.info("%s: no earlier checkpoint; starting from scratch", model)
        return Resume()
    checkpoint = load_checkpoint(previous, required)
    saved = saved_architecture(checkpoint, architecture, previous, defaults)
    changed = [k for k in architecture if _plain(saved[k]) != _plain(architecture[k])]
    if changed:
        sizes = ", ".join(f"{k} {saved[k]} -> {architecture[k]}" for k in changed)
        reason = f"{previous.name} has another network shape ({sizes}); {model} starts afresh tonight"
        log.warning("%s: %s", model, reason)
        return Resume(restart_reason=reason)
    log.info("%s: continuing from %s", model, previous.name)
    return Resume(checkpoint, previous.stem)


def distill_metrics(weight: float, final: float | None, curve: list[float] | None, resume: Resume,
                    key: str) -> dict:
    """The ``distill_loss`` metrics of a stage that distils last night's encoder (CaSSLe).

    Args:
        weight: the configured ``distill_weight``.
        final, curve: the term's final value and curve; ``curve`` ``None`` when it was off.
        resume: tonight's :class:`Resume` (says why there was nothing to distill from).
        key: the weight's config key, for the reason (``"models.jepa.distill_weight"``).
    Returns:
        ``{"weight", "final", "curve"}``, or ``{"weight", "off"}`` with the reason.
    """
    if curve is not None:
        return {"weight": weight, "final": final, "curve": curve}
    if weight == 0:
        off = f"{key} is 0"
    elif resume.restart_reason:
        off = "the model starts afresh tonight: nothing to distill from"
    else:
        off = "first night: no earlier model to distill from"
    return {"weight": weight, "off": off}


def save_night_checkpoint(night: Night, model: str, state: dict) -> Path:
    """Write ``checkpoints/{model}/{date}.pt`` with the night's date, model version and RNG
    state beside ``state`` (weights, optimizer, step, config, input sizes)."""
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return save_checkpoint(night.paths.checkpoints / model, night.date, {
        **state, "date": night.day, "model_version": model_version(model, night.date), "rng": rng})
