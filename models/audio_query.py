"""``sleep.py query --audio PATH``: any file FFmpeg reads -> a vector in the ``audio`` space.

The file is decoded by FFmpeg to 16 kHz mono float samples on a pipe, cut into
``ingest.clip_seconds`` pieces like the stored segments, embedded with the latest CPC
checkpoint, and the pieces' embeddings averaged.
"""
from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import ffmpeg
import numpy as np
import torch

from ingest.binaries import ffmpeg_path
from pipeline.config import CpcConfig, SleepConfig
from pipeline.errors import UsageError
from pipeline.paths import Paths

from .audio_features import log_mel_batches
from .cpc import CpcModel
from .checkpoint import latest_checkpoint, load_checkpoint
from .cpc_train import embed_features

log = logging.getLogger(__name__)


def decode_command(path: Path, sample_rate: int) -> list[str]:
    """The FFmpeg command that writes the first audio stream of ``path`` as mono f32le to stdout."""
    stream = ffmpeg.input(str(path)).output("pipe:", map="0:a:0", format="f32le", acodec="pcm_f32le",
                                             ac=1, ar=sample_rate, vn=None)
    cmd = stream.compile(cmd=str(ffmpeg_path()))
    # ffmpeg-python puts global args after the output, where FFmpeg may ignore them.
    return [cmd[0], "-nostdin", "-v", "error", *cmd[1:]]


def decode_audio(path: Path, sample_rate: int) -> np.ndarray:
    """Decode ``path`` to mono float32 at ``sample_rate``.

    Raises:
        UsageError: the file is missing, FFmpeg cannot read it, or it has no audio.
    """
    if not path.is_file():
        raise UsageError(f"--audio {path}: no such file")
    cmd = decode_command(path, sample_rate)
    log.debug("decoding: %s", " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True)
    if proc.returncode != 0:
        lines = proc.stderr.decode(errors="replace").strip().splitlines()
        reason = lines[-1] if lines else f"ffmpeg exit code {proc.returncode}"
        if "matches no streams" in proc.stderr.decode(errors="replace"):
            reason = "it has no audio stream"
        raise UsageError(f"--audio {path}: cannot decode ({reason})")
    wave = np.frombuffer(proc.stdout, dtype="<f4").astype(np.float32)
    if wave.size == 0:
        raise UsageError(f"--audio {path}: it has no audio samples")
    return wave


def load_latest_cpc(paths: Paths, device: str) -> tuple[str, CpcModel]:
    """The latest night's CPC model, built with the config it was trained with.

    Raises:
        UsageError: no night has trained CPC yet under this root.
    """
    latest = latest_checkpoint(paths.checkpoints / "cpc")
    if latest is None:
        raise UsageError(f"no CPC checkpoint yet under {paths.checkpoints / 'cpc'}: run a night with audio first")
    checkpoint = load_checkpoint(latest, ("model", "config"))
    model = CpcModel(CpcConfig(**checkpoint["config"])).to(device)
    model.load_state_dict(checkpoint["model"])
    model.eval()
    return checkpoint.get("model_version", f"cpc@{latest.stem}"), model


@torch.no_grad()
def encode_audio_file(path: str | Path, cfg: SleepConfig, paths: Paths, device: str) -> tuple[str, np.ndarray]:
    """Embed a sound file into the ``audio`` space.

    Args:
        path: any file FFmpeg reads that has an audio stream.
        cfg: the validated config (``ingest.clip_seconds`` sets the piece length).
        paths: the layout of the root whose checkpoints are used.
        device: ``cpu`` or ``cuda``.
    Returns:
        ``(model_version, vector)``: ``cpc@{date}`` and an L2-normalised ``(D,)`` float32.
    Raises:
        UsageError: unreadable file, no audio, or no checkpoint yet.
    """
    version, model = load_latest_cpc(paths, device)
    mcfg = model.cfg
    wave = decode_audio(Path(path), mcfg.sample_rate)
    piece = max(1, int(round(cfg.ingest.clip_seconds * mcfg.sample_rate)))
    pieces = [wave[i:i + piece] for i in range(0, len(wave), piece)]
    if len(pieces) > 1 and len(pieces[-1]) < piece // 4:
        pieces = pieces[:-1]  # a sliver at the end says little and would count as much as a piece
    vectors, kept = embed_features(model, log_mel_batches(pieces, mcfg, device), mcfg, device)
    if not kept:
        raise UsageError(f"--audio {path}: too short to embed ({len(wave) / mcfg.sample_rate:.3f}s)")
    vector = vectors.mean(axis=0)
    return version, (vector / max(float(np.linalg.norm(vector)), 1e-12)).astype(np.float32)
