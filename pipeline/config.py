"""One validated config object for the whole night.

The YAML file is read, ``--set a.b.c=value`` overrides are applied, and the result is
validated by :class:`SleepConfig` before any work starts. Unknown keys, wrong types and
bad values are all reported at once, each naming its key (borgmatic ``validate.py``).
Every function receives only the sub-config it needs (``cfg.ingest``), never a global.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "default.yaml"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RuntimeConfig(_Section):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 0


class IngestConfig(_Section):
    clip_seconds: float = Field(3.0, gt=0, le=600)
    frame_fps: float = Field(1.0, gt=0, le=60)
    frame_short_side: int = Field(256, ge=16, le=4096)
    jpeg_quality: int = Field(3, ge=2, le=31, description="FFmpeg -q:v, 2 best .. 31 worst")
    audio_sample_rate: int = Field(16000, ge=8000, le=96000)
    write_clips: bool = True
    workers: int = Field(0, ge=0, description="processes; 0 means one per CPU core")
    extensions: list[str] = Field(
        default_factory=lambda: [
            ".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi", ".mts", ".3gp", ".flv", ".wmv",
            ".mpg", ".mpeg", ".ts", ".m4a", ".mp3", ".wav", ".flac", ".ogg", ".opus", ".aac",
            ".amr", ".wma",
        ]
    )


class RetentionConfig(_Section):
    raw_days: int | None = Field(None, ge=0, description="keep raw recordings N days; null keeps forever")
    derived_days: int | None = Field(None, ge=0, description="keep clips, frames, audio M days")


class MemoryConfig(_Section):
    retention: RetentionConfig = Field(default_factory=RetentionConfig)


class ReportConfig(_Section):
    max_listed_files: int = Field(500, ge=1)


class CpcConfig(_Section):
    """CPC audio model (van den Oord et al. 2018; facebookresearch/CPC_audio) and its nightly training."""

    sample_rate: int = Field(16000, ge=8000, le=96000, description="the model's input rate; other rates are resampled")
    n_mels: int = Field(64, ge=8, le=256)
    n_fft: int = Field(400, ge=64, description="STFT window in samples (25 ms at 16 kHz)")
    hop_length: int = Field(160, ge=16, description="mel frame step in samples (10 ms at 16 kHz)")
    encoder_channels: int = Field(256, ge=8, description="width of the convolutional encoder (z)")
    encoder_layers: int = Field(3, ge=1, le=8)
    encoder_stride: int = Field(2, ge=1, le=8, description="mel frames per encoded step")
    context_hidden: int = Field(256, ge=8, description="GRU hidden size (c); the audio embedding size")
    predict_steps: int = Field(12, ge=1, le=64, description="K future steps predicted")
    negatives: Literal["batch", "other_sequences", "same_sequence"] = Field(
        "batch", description="where InfoNCE negatives come from: any sequence and time step of the "
        "batch (CPC_audio), only other sequences, or only other time steps of the same sequence")
    n_negatives: int = Field(128, ge=1)
    window_s: float = Field(1.28, gt=0, description="seconds per training crop")
    batch_size: int = Field(64, ge=2)
    lr: float = Field(2e-4, gt=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    warmup_steps: int = Field(100, ge=0)
    weight_decay: float = Field(0.01, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    epochs: float = Field(4.0, gt=0, description="passes over the night's audio (today's plus replay)")
    min_steps: int = Field(200, ge=1)
    max_steps: int = Field(20000, ge=1)
    replay_ratio: float = Field(0.5, ge=0, description="earlier days' segments per segment of today")
    replay_max_segments: int = Field(20000, ge=0)
    amp: bool = Field(True, description="bf16 autocast on CUDA (ignored on CPU)")
    embed_batch_size: int = Field(256, ge=1)
    log_every: int = Field(20, ge=1)


class AlignConfig(_Section):
    """CLIP-style projection heads tying the vision and audio spaces together (open_clip ClipLoss)."""

    dim: int = Field(256, ge=4, description="size of the shared space")
    hidden: int = Field(512, ge=0, description="hidden width of each head; 0 = a linear projection")
    batch_size: int = Field(256, ge=2)
    epochs: int = Field(30, ge=1)
    min_steps: int = Field(200, ge=1)
    max_steps: int = Field(5000, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.1, ge=0, description="on weight matrices only; never on the logit scale")
    warmup_steps: int = Field(20, ge=0)


class AudioModelsConfig(_Section):
    """The ``audio:`` section: CPC on the day's sound and the audio-visual bridge."""

    heldout_fraction: float = Field(0.1, ge=0, lt=1, description="share of the day's clips kept out "
                                    "of CPC and alignment training, to measure both on")
    cpc: CpcConfig = Field(default_factory=CpcConfig)
    align: AlignConfig = Field(default_factory=AlignConfig)


class SleepConfig(_Section):
    """The whole validated configuration of a night."""

    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    memory: MemoryConfig = Field(default_factory=MemoryConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    audio: AudioModelsConfig = Field(default_factory=AudioModelsConfig)

    def section_hash(self, *sections: str) -> str:
        """A short stable hash of the named sub-configs; a stage reruns when it changes."""
        data = {name: getattr(self, name).model_dump(mode="json") for name in sections}
        blob = json.dumps(data, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _apply_override(tree: dict, assignment: str) -> None:
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected key.path=value")
    key, _, raw = assignment.partition("=")
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set {assignment!r}: empty key")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {part!r} is a value, not a section")
        node = child
    # YAML typing lets `--set ingest.workers=4` and `--set ingest.write_clips=false` work.
    node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None


def _format_errors(source: str, exc: ValidationError) -> str:
    lines = [f"{source}: {exc.error_count()} problem(s) in the config:"]
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key")
        else:
            lines.append(f"  {key}: {err['msg']} (got {err.get('input')!r})")
    return "\n".join(lines)


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> SleepConfig:
    """Read, override and validate a config.

    Args:
        path: a YAML file; ``None`` means ``configs/default.yaml``.
        overrides: ``key.path=value`` strings applied after the file.
    Returns:
        the validated :class:`SleepConfig`.
    Raises:
        ConfigError: naming the file and every bad key.
    """
    path = Path(path) if path else DEFAULT_CONFIG
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror or exc})") from None
    try:
        tree = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    for assignment in overrides or []:
        _apply_override(tree, assignment)
    try:
        return SleepConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_format_errors(str(path), exc)) from None
