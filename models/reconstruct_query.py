"""Use a night's reconstructor: ``sleep.py query --fragment`` and the dream stage's recalls."""
from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pipeline.config import ReconstructConfig, SleepConfig
from pipeline.errors import UsageError
from pipeline.paths import Paths

from .checkpoint import latest_checkpoint, load_checkpoint
from .reconstruct import build
from .reconstruct_stage import MODEL, SPACE
from .reconstruct_train import complete
from .vision_query import encode_image_file

log = logging.getLogger(__name__)
REQUIRED = ("models", "config", "input_version", "bank_rows", "date", "dim", "chosen")


def load_completer(checkpoint: Path, engine, paths: Paths, version: str, use: str, device: str
                   ) -> tuple[str, Callable[[np.ndarray], np.ndarray]]:
    """The completion a reconstructor checkpoint offers for fragments of ``version``'s vectors.

    Args:
        use: ``models.reconstruct.use``; ``auto`` takes what that night measured best.
    Returns:
        ``(name, complete)``: ``"mlp"``, ``"hopfield"`` or ``"fragment"`` (completion did not
        help that night: fragments stay as they are), and ``(N, D) -> (N, D)`` unit vectors.
    Raises:
        UsageError: the checkpoint completes another vision version's fragments, or the
            clips it stored are gone from the memory.
    """
    from memory.store import load_vectors

    state = load_checkpoint(checkpoint, REQUIRED)
    if state["input_version"] != version:
        raise UsageError(f"{checkpoint}: the reconstructor completes {state['input_version']} fragments, not "
                         f"{version}; run that night's reconstruct stage (sleep.py --date DATE --only reconstruct)")
    _, vectors = load_vectors(engine, paths, space=SPACE, model_version=version, date=state["date"])
    bank_rows = np.asarray(state["bank_rows"])
    if len(vectors) == 0 or bank_rows.max() >= len(vectors):
        raise UsageError(f"{checkpoint}: the clips it stored ({version}, {state['date']}) are no longer in the "
                         f"memory; run that night's reconstruct stage again")
    variant = state["chosen"] if use == "auto" else use
    if variant == "fragment":
        return variant, lambda fragments: fragments / np.linalg.norm(fragments, axis=1, keepdims=True)
    model = build(variant, int(state["dim"]), ReconstructConfig.model_validate(state["config"]))
    model.load_state_dict(state["models"][variant])
    model.to(device)
    bank = vectors[bank_rows]
    return variant, lambda fragments: complete(model, fragments, bank, device)


def encode_fragment_file(path: str | Path, cfg: SleepConfig, paths: Paths, engine, device: str
                         ) -> tuple[str, np.ndarray]:
    """Embed an image of part of a moment and complete it into a clip embedding.

    Args:
        path: any image PIL reads: a crop, a glimpse, a blurred or partly hidden picture.
        cfg: the validated config (``models.reconstruct.use`` picks the variant).
        paths: the layout (checkpoints and shards).
        engine: the memory database (the Hopfield variant recalls from the stored clips).
        device: ``"cpu"`` or ``"cuda"``.
    Returns:
        ``(model_version, vector)``: the vision version (``jepa@{date}``) and the completed
        ``(dim,)`` vector, to search the space ``vision``.
    Raises:
        UsageError: unreadable image, no reconstructor yet, or one trained for an older
            vision model than the newest.
    """
    version, fragment = encode_image_file(path, cfg, paths, device)
    checkpoint = latest_checkpoint(paths.checkpoints / MODEL)
    if checkpoint is None:
        raise UsageError(f"{paths.checkpoints / MODEL}: no reconstructor yet; run a night first")
    use = cfg.models.reconstruct.use
    variant, completer = load_completer(checkpoint, engine, paths, version, use, device)
    log.info("--fragment: completed with %s (%s)", variant if variant != "fragment" else "nothing: the fragment as it is",
             "measured best on that night's held-out frames" if use == "auto" else "models.reconstruct.use")
    return version, completer(fragment[None])[0]
