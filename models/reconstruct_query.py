"""``sleep.py query --fragment``: embed a fragment of a moment, complete it, search the clips."""
from __future__ import annotations

import logging
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
    from memory.store import load_vectors

    version, fragment = encode_image_file(path, cfg, paths, device)
    checkpoint = latest_checkpoint(paths.checkpoints / MODEL)
    if checkpoint is None:
        raise UsageError(f"{paths.checkpoints / MODEL}: no reconstructor yet; run a night first")
    state = load_checkpoint(checkpoint, ("models", "config", "input_version", "bank_rows", "date", "dim", "chosen"))
    if state["input_version"] != version:
        raise UsageError(f"{checkpoint}: the reconstructor completes {state['input_version']} fragments but the "
                         f"newest vision model is {version}; run that night's reconstruct stage "
                         f"(sleep.py --date DATE --only reconstruct)")
    _, vectors = load_vectors(engine, paths, space=SPACE, model_version=version, date=state["date"])
    bank_rows = np.asarray(state["bank_rows"])
    if len(vectors) == 0 or bank_rows.max() >= len(vectors):
        raise UsageError(f"{checkpoint}: the clips it stored ({version}, {state['date']}) are no longer in the "
                         f"memory; run that night's reconstruct stage again")
    use = cfg.models.reconstruct.use
    variant = state["chosen"] if use == "auto" else use
    log.info("--fragment: completed with %s (%s)", variant if variant != "fragment" else "nothing: the fragment as it is",
             "measured best on that night's held-out frames" if use == "auto" else "models.reconstruct.use")
    if variant == "fragment":
        return version, fragment
    model = build(variant, int(state["dim"]), ReconstructConfig.model_validate(state["config"]))
    model.load_state_dict(state["models"][variant])
    return version, complete(model.to(device), fragment[None], vectors[bank_rows], device)[0]
