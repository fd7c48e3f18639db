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


class SearchConfig(_Section):
    index: Literal["auto", "exact", "flat", "ivf", "hnsw"] = Field(
        "auto", description="exact: never FAISS; flat: exact IndexFlatIP; ivf/hnsw: approximate; "
                            "auto: ivf, falling back to exact where recall would drop")
    faiss_threshold: int = Field(200_000, ge=0, description="rows from which FAISS is used")
    min_recall: float = Field(0.95, gt=0, le=1, description="recall@10 an approximate index must keep")


class MemoryConfig(_Section):
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)


class ReportConfig(_Section):
    max_listed_files: int = Field(500, ge=1)


class SleepConfig(_Section):
    """The whole validated configuration of a night."""

    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    memory: MemoryConfig = Field(default_factory=MemoryConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)

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
