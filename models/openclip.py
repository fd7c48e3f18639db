"""OpenCLIP from the user's own weights file: frames and free text into one space.

Nothing is downloaded: the weights come from ``models.openclip.weights`` and the tokenizer is
the BPE vocabulary that ships inside ``open_clip``. Unlike the nightly encoders these
weights do not change from night to night, so their version is the weights' content hash
(``openclip@{model}-{sha256[:12]}``) and a text search spans every night embedded with them.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from core.config import OpenClipConfig
from core.progress import bar_off
from core.sealed import SealedFileError
from core.vault import open_file

# Never reach for the network, whatever model name the config holds.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


class WeightsError(ValueError):
    """The configured OpenCLIP weights are not set, missing, or do not fit the architecture."""


def weights_version(cfg: OpenClipConfig) -> str:
    """``openclip@{model}-{first 12 hex digits of the weights' sha256}``.

    Raises:
        WeightsError: no weights configured, or the file is missing.
    """
    path = _weights_path(cfg)
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return f"openclip@{cfg.model}-{digest.hexdigest()[:12]}"


def _weights_path(cfg: OpenClipConfig) -> Path:
    if not cfg.weights:
        raise WeightsError("models.openclip.weights is not set: free-text search needs OpenCLIP weights on disk")
    path = Path(cfg.weights).expanduser()
    if not path.is_file():
        raise WeightsError(f"models.openclip.weights {path}: no such file")
    return path


@dataclass
class Clip:
    """A loaded OpenCLIP model with its image preprocessing and tokenizer."""

    model: torch.nn.Module
    preprocess: object
    tokenizer: object
    device: str
    version: str

    @torch.no_grad()
    def embed_images(self, paths: list[Path], batch_size: int, progress: bool = True) -> tuple[np.ndarray, list[int],
                                                                                                  list[dict]]:
        """Unit image embeddings of the readable files, their positions, and the unreadable ones."""
        vectors, kept, failed = [], [], []
        for start in tqdm(range(0, len(paths), batch_size), desc="openclip", unit="batch",
                          disable=bar_off(progress, len(paths) <= batch_size), leave=False):
            batch = []
            for i, path in enumerate(paths[start:start + batch_size], start):
                try:
                    # Through the vault: a sealed memory's frames are sealed.
                    with open_file(path) as fh, Image.open(fh) as image:
                        batch.append(self.preprocess(image.convert("RGB")))
                    kept.append(i)
                except (OSError, UnidentifiedImageError, SealedFileError) as exc:
                    failed.append({"path": str(path), "reason": str(exc)})
            if batch:
                features = self.model.encode_image(torch.stack(batch).to(self.device)).float()
                vectors.append(torch.nn.functional.normalize(features, dim=-1).cpu().numpy())
        dim = getattr(self.model.visual, "output_dim", 0)
        return (np.concatenate(vectors) if vectors else np.zeros((0, dim), np.float32)), kept, failed

    @torch.no_grad()
    def embed_text(self, text: str) -> np.ndarray:
        features = self.model.encode_text(self.tokenizer([text]).to(self.device)).float()
        return torch.nn.functional.normalize(features, dim=-1)[0].cpu().numpy()


def load_clip(cfg: OpenClipConfig, device: str) -> Clip:
    """Build ``cfg.model`` with the weights in ``cfg.weights``.

    Raises:
        WeightsError: no weights, a missing file, or weights that do not fit the architecture.
    """
    import open_clip

    path = _weights_path(cfg)
    if cfg.model_config_file:
        config = Path(cfg.model_config_file).expanduser()
        if not config.is_file():
            raise WeightsError(f"models.openclip.model_config_file {config}: no such file")
        open_clip.add_model_config(config)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(cfg.model, pretrained=str(path), device=device)
        tokenizer = open_clip.get_tokenizer(cfg.model)
    except Exception as exc:  # torch and open_clip raise many types for a damaged or foreign file
        first_line = (str(exc).strip().splitlines() or [""])[0][:300]
        raise WeightsError(f"models.openclip: {path} does not load as {cfg.model} ({type(exc).__name__}: "
                          f"{first_line})") from None
    return Clip(model.eval(), preprocess, tokenizer, device, weights_version(cfg))
