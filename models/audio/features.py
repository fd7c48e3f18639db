"""From a WAV file to the log-mel frames the CPC model reads.

WAVs are read with ``soundfile`` (torchaudio 2.9 cannot read files without torchcodec);
torchaudio is used only for its transforms (``MelSpectrogram``, ``Resample``). A sealed
memory's segments are opened through its vault (:func:`core.vault.vault_of`) and decrypted
as libsndfile reads them; a plain memory's are opened by libsndfile itself.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import soundfile
import torch
import torchaudio

from core.config import CpcConfig
from core.sealed import SealedFileError
from core.vault import Vault, vault_of

log = logging.getLogger(__name__)

# Added before the log so that digital silence gives a finite floor, not -inf.
LOG_FLOOR = 1e-6


class AudioReadError(Exception):
    """A segment could not be read; the stage records the reason and goes on."""


def read_wav(path: Path, sample_rate: int, keyring: Vault | None = None) -> np.ndarray:
    """Read a sound file as mono float32 at ``sample_rate``.

    Args:
        path: any file libsndfile reads (the night's segments are 16 kHz mono WAV).
        sample_rate: the rate the model expects; other rates are resampled (a guard:
            ingest already writes this rate).
        keyring: the vault of the root holding ``path`` (default: found from the path).
    Returns:
        a ``(samples,)`` float32 array in [-1, 1].
    Raises:
        AudioReadError: unreadable, empty or not finite.
    """
    keyring = keyring or vault_of(path)
    try:
        if keyring.sealing:
            with keyring.open(Path(path)) as fh:
                data, rate = soundfile.read(fh, dtype="float32", always_2d=True)
        else:  # libsndfile opens the file itself: a read through Python costs twice as much
            data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, OSError, soundfile.LibsndfileError, SealedFileError) as exc:
        raise AudioReadError(f"cannot read: {exc}") from None
    if data.shape[0] == 0:
        raise AudioReadError("no samples")
    wave = data.mean(axis=1)
    if not np.isfinite(wave).all():
        raise AudioReadError("samples are not finite")
    if rate != sample_rate:
        log.debug("%s: resampling %d Hz -> %d Hz", path, rate, sample_rate)
        wave = resample(wave, rate, sample_rate)
    return wave


def resample(wave: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Band-limited resampling with torchaudio (sinc interpolation)."""
    out = torchaudio.functional.resample(torch.from_numpy(wave), from_rate, to_rate)
    return out.numpy().astype(np.float32, copy=False)


class LogMel(torch.nn.Module):
    """``log(MelSpectrogram(wave) + 1e-6)``: ``(B, samples)`` -> ``(B, n_mels, frames)``."""

    def __init__(self, cfg: CpcConfig):
        super().__init__()
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_length,
            n_mels=cfg.n_mels, power=2.0)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        # The STFT runs in float32 even under autocast: bf16 spectra lose the quiet bins.
        with torch.autocast(device_type=wave.device.type, enabled=False):
            return torch.log(self.mel(wave.float()) + LOG_FLOOR)


def num_frames(samples: int, cfg: CpcConfig) -> int:
    """Mel frames that ``samples`` give (``center=True``, as torchaudio's default)."""
    return samples // cfg.hop_length + 1


@torch.no_grad()
def log_mel_batches(waves: list[np.ndarray], cfg: CpcConfig, device: str,
                    batch_size: int = 64) -> list[torch.Tensor]:
    """Log-mel features of many waves, computed on ``device`` and returned on the CPU.

    Waves of equal length (nearly all of a night's segments) are batched together.

    Args:
        waves: mono float32 arrays at ``cfg.sample_rate``.
        cfg: the CPC config (mel parameters).
        device: where the STFTs run.
        batch_size: waves per STFT call.
    Returns:
        one ``(n_mels, frames)`` float16 tensor per wave, in the input order (float16
        halves the memory a 16-hour day takes; log-mel values need no more precision).
    """
    transform = LogMel(cfg).to(device)
    out: list[torch.Tensor | None] = [None] * len(waves)
    by_length: dict[int, list[int]] = {}
    for i, wave in enumerate(waves):
        by_length.setdefault(len(wave), []).append(i)
    for indices in by_length.values():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start:start + batch_size]
            batch = torch.from_numpy(np.stack([waves[i] for i in chunk])).to(device)
            mel = transform(batch).to(torch.float16).cpu()
            for j, i in enumerate(chunk):
                out[i] = mel[j]
    return out  # type: ignore[return-value]
