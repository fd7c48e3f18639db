"""Stage ``audio``: CPC on the day's sound, then every audio segment into the space ``audio``.

The night continues last night's model (``checkpoints/cpc/``) on today's segments mixed
with a replay of earlier days' segments (the same number from every day; a clip's keepsake
snippet stands in for a segment retention removed), distilling last night's frozen model
into tonight's (CaSSLe; ``models.cpc.distill_weight``), measures CPC loss and per-step
accuracy on held-out clips, embeds every segment of the day (pooled context vectors) and
writes them with model version ``cpc@{date}``. Clips without audio have no segment row
and are simply absent: nothing is zero-filled.
"""
from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import ffmpeg
import numpy as np
import torch
from tqdm import tqdm

from core.config import CpcConfig, SleepConfig
from core.errors import UsageError
from core.paths import Paths
from core.progress import bar_off
from core.sealed import SealedFileError, is_sealed
from core.vault import read_file
from ingest.binaries import ffmpeg_path
from memory.keepsakes import day_keepsakes, keepsake_days
from memory.media import SegmentRef, day_segments, earlier_segments_by_day
from models.audio.cpc import CpcModel
from models.audio.features import AudioReadError, log_mel_batches, read_wav
from models.audio.train import (
    architecture_of,
    crop_frames,
    embed_features,
    evaluate_cpc,
    train_cpc,
)
from models.batches import replay_by_day
from models.checkpoint import load_checkpoint
from models.together import together
from stages import Night
from stages.common import (
    distill_metrics,
    heldout_mask,
    model_of,
    model_version,
    night_seed,
    resume_state,
    save_night_checkpoint,
    version_checkpoint,
)

log = logging.getLogger(__name__)

MODEL = model_of("audio")
SPACE = "audio"
CURVE_POINTS = 200  # loss curve points kept in summary.json


def pick_replay(session, day: str, paths: Paths, count: int, seed: int) -> tuple[list[SegmentRef], dict]:
    """A seeded sample of ``count`` earlier segments, the same number from every earlier day
    (:func:`models.batches.replay_by_day`), as files on disk.

    A day whose segments retention removed replays its clips' keepsake snippets instead
    (``memory.keepsakes``; 16 kHz mono, as segments are), and so does a drawn segment whose
    file is gone, when its clip kept one.

    Returns:
        ``(refs, counts)``: the segments to read (a snippet as a :class:`SegmentRef` of its
        clip) and ``{"pool", "from_keepsakes", "missing"}``.
    """
    segments = earlier_segments_by_day(session, day)
    snippets = {d: [SegmentRef(k.clip_id, k.snippet, d) for k in day_keepsakes(session, d) if k.snippet]
                for d in keepsake_days(session) if d < day}
    pools = {**{d: refs for d, refs in snippets.items() if d not in segments}, **segments}
    counts = {"pool": sum(len(v) for v in pools.values()), "from_keepsakes": 0, "missing": 0}
    refs: list[SegmentRef] = []
    for d, drawn in replay_by_day(pools, count, seed).items():
        kept = {ref.clip_id: ref for ref in snippets.get(d, [])}
        for ref in drawn:
            if d in segments and not (paths.root / ref.path).is_file():
                ref = kept.get(ref.clip_id, ref)  # the segment is gone; its clip's snippet, if kept
            if not (paths.root / ref.path).is_file():
                counts["missing"] += 1
                continue
            if ref is kept.get(ref.clip_id):
                counts["from_keepsakes"] += 1
            refs.append(ref)
    return refs, counts


def load_waves(refs: list[SegmentRef], paths: Paths, sample_rate: int, *, desc: str
               ) -> tuple[list[SegmentRef], list[np.ndarray], list[dict]]:
    """Read segments; a file that cannot be read is recorded with its reason and left out."""
    kept, waves, skipped = [], [], []
    keyring = paths.vault
    for ref in tqdm(refs, desc=desc, unit="file", leave=False, disable=bar_off(True, len(refs) < 200)):
        try:
            waves.append(read_wav(paths.root / ref.path, sample_rate, keyring))
        except AudioReadError as exc:
            skipped.append({"file": ref.path, "reason": str(exc)})
            continue
        kept.append(ref)
    return kept, waves, skipped


def _curve(history: list[dict], key: str = "loss") -> list[float]:
    stride = max(1, len(history) // CURVE_POINTS)
    return [round(h[key], 5) for h in history[::stride]]


def _distill(weight: float, trained, resume) -> dict:
    """The distillation term's weight, last logged value and curve, or why it was off."""
    if not trained.distilled:
        return distill_metrics(weight, None, None, resume, "models.cpc.distill_weight")
    return distill_metrics(weight, round(trained.history[-1]["distill"], 5), _curve(trained.history, "distill"),
                           resume, "models.cpc.distill_weight")


def run(night: Night) -> dict:
    """Train CPC on the night's audio and write the ``audio`` space.

    Returns:
        the stage result: counts, replay, resume, ``model_version``, and ``metrics``
        (held-out CPC loss and per-step accuracy with chance, the training curve and
        throughput).
    """
    from memory.store import EmbeddingRow, write_embeddings

    cfg, day, paths, device = night.cfg.models.cpc, night.day, night.paths, night.device
    fraction, seed = night.cfg.models.heldout_fraction, night_seed(night)
    with night.Session() as session:
        today_refs = day_segments(session, day)
    today, today_waves, skipped = load_waves(today_refs, paths, cfg.sample_rate, desc="audio")
    for item in skipped:
        log.warning("audio: %s left out: %s", item["file"], item["reason"])
    result: dict = {"segments": len(today), "skipped": skipped, "negatives": cfg.negatives,
                    "n_negatives": cfg.n_negatives}
    if not today:
        log.info("audio: no audio segments on %s; nothing to train or embed", day)
        return {**result, "note": "no audio today"}

    wanted = min(cfg.replay_max_segments, round(cfg.replay_ratio * len(today)))
    with night.Session() as session:
        replay_refs, replay_counts = pick_replay(session, day, paths, wanted, seed)
    replay, replay_waves, replay_bad = load_waves(replay_refs, paths, cfg.sample_rate, desc="replay")
    per_day: dict[str, int] = {}
    for ref in replay:
        per_day[ref.date] = per_day.get(ref.date, 0) + 1
    result["replay"] = {"segments": len(replay), "days": sorted(per_day), "per_day": dict(sorted(per_day.items())),
                        **replay_counts, "unreadable": len(replay_bad)}

    features = log_mel_batches(today_waves, cfg, device)
    replay_features = log_mel_batches(replay_waves, cfg, device)
    heldout = heldout_mask([r.clip_id for r in today], fraction, seed)
    train_features = [f for f, h in zip(features, heldout) if not h] + replay_features
    eval_features = [f for f, h in zip(features, heldout) if h]
    frames = crop_frames(cfg)
    if not any(f.shape[1] >= frames for f in train_features):
        log.warning("audio: no segment is as long as one %.2fs training crop; nothing trained", cfg.window_s)
        return {**result, "note": f"no segment as long as audio.cpc.window_s={cfg.window_s}s"}

    resume = resume_state(night, MODEL, architecture_of(cfg), ("model", "optimizer", "step", "config"))
    log.info("audio: %d segments today (%d held out), %d replayed from %d earlier day(s), %s",
             len(today), len(eval_features), len(replay), len(result["replay"]["days"]),
             f"continuing from {resume.resumed_from}" if resume.resumed_from else "a fresh model")

    trained = together(train_cpc, train_features, cfg, device, seed=seed, resume=resume.checkpoint)
    evaluation = evaluate_cpc(trained.model, eval_features, cfg, device, seed=seed)
    evaluated_on = "held-out clips"
    if evaluation is None:
        evaluation = evaluate_cpc(trained.model, features, cfg, device, seed=seed)
        evaluated_on = "all of today's clips (too few held out)"

    vectors, kept = embed_features(trained.model, features, cfg, device)
    version = model_version(MODEL, day)
    save_night_checkpoint(night, MODEL, {
        "model": trained.model.state_dict(), "optimizer": trained.optimizer_state(),
        "step": trained.step, "config": cfg.model_dump()})
    rows = [EmbeddingRow(clip_id=today[i].clip_id, modality="audio") for i in kept]
    write_embeddings(night.engine, paths, space=SPACE, model_version=version, date=day, rows=rows,
                     vectors=vectors)
    log.info("audio: wrote %d vectors to space %r as %s", len(rows), SPACE, version)
    return {**result, "model_version": version, "embedded": len(rows), "heldout_segments": len(eval_features),
            **resume.as_result(), "steps": trained.steps,
            "global_step": trained.step,
            "metrics": {**(evaluation or {}), "evaluated_on": evaluated_on if evaluation else None,
                        "train_loss_curve": _curve(trained.history),
                        "distill_loss": _distill(cfg.distill_weight, trained, resume),
                        "train_seconds": round(trained.seconds, 2),
                        "audio_seconds_per_second": round(trained.audio_per_second, 1)}}


# --- query side ------------------------------------------------------------
STDIN = Path("pipe:0")  # FFmpeg's name for its standard input


def decode_command(path: Path, sample_rate: int) -> list[str]:
    """The FFmpeg command that writes the first audio stream of ``path`` (:data:`STDIN`: what
    it is fed) as mono f32le to stdout."""
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
    try:
        # A sealed file (a probe sound of a sealed memory) is decrypted here and fed to FFmpeg
        # through a pipe: its plaintext is never written anywhere.
        plaintext = read_file(path) if is_sealed(path) else None
    except (OSError, SealedFileError) as exc:
        raise UsageError(f"--audio {path}: cannot read ({exc})") from None
    cmd = decode_command(path if plaintext is None else STDIN, sample_rate)
    log.debug("decoding: %s", " ".join(cmd))
    proc = subprocess.run(cmd, input=plaintext, capture_output=True)
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


def load_latest_cpc(paths: Paths, device: str, version: str | None = None) -> tuple[str, CpcModel]:
    """A night's CPC model (the newest, or the one that wrote ``version``), built with the
    config it was trained with.

    Raises:
        UsageError: no night has trained CPC yet under this root, or that version's checkpoint is gone.
    """
    latest = version_checkpoint(paths, "audio", version)
    checkpoint = load_checkpoint(latest, ("model", "config"))
    model = CpcModel(CpcConfig(**checkpoint["config"])).to(device)
    model.load_state_dict(checkpoint["model"])
    model.eval()
    return checkpoint.get("model_version", model_version(MODEL, latest.stem)), model


@torch.no_grad()
def encode_audio_file(path: str | Path, cfg: SleepConfig, paths: Paths, device: str,
                      version: str | None = None) -> tuple[str, np.ndarray]:
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
    version, model = load_latest_cpc(paths, device, version)
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
