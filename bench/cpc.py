"""CPC throughput: seconds of audio per second for features, training and embedding, and
the projected time for a 16-hour day at the given config.

    python bench/cpc.py                       # CUDA, configs/default.yaml (bf16 autocast)
    python bench/cpc.py --device cpu --tiny   # a smoke run on CPU with configs/tiny.yaml

Training is timed after a few warm-up steps (cuDNN autotuning, allocator growth). The
baseline, measured in the same run, is the same training with autocast off (float32); on
CPU autocast is never used, so the two differ only by noise there. The audio is synthetic
(seeded tones, noise and pulses made here): nothing is downloaded.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.config import CONFIG_DIR, load_config
from models.audio.features import log_mel_batches
from models.audio.train import embed_features, night_steps, train_cpc

DAY_SECONDS = 16 * 3600


def synthetic_segments(count: int, seconds: float, rate: int, seed: int = 0) -> list[np.ndarray]:
    """Seeded 3 s segments: a few tones, coloured noise and on/off pulses, mixed."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    out = []
    for _ in range(count):
        wave = sum(rng.uniform(0.05, 0.3) * np.sin(2 * np.pi * rng.uniform(80, 6000) * t + rng.uniform(0, 6))
                   for _ in range(3))
        noise = np.cumsum(rng.standard_normal(len(t))) if rng.random() < 0.5 else rng.standard_normal(len(t))
        wave = wave + 0.1 * noise / (np.abs(noise).max() + 1e-9)
        wave = wave * (np.sin(2 * np.pi * rng.uniform(0.5, 4) * t) > -0.5)
        out.append(wave.astype(np.float32))
    return out


def timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def train_throughput(features, cfg, device: str, steps: int, warmup: int) -> float:
    """Seconds of audio per second of training, after ``warmup`` untimed steps."""
    first = train_cpc(features, cfg, device, steps=warmup, progress=False)
    state = {"model": first.model.state_dict(), "optimizer": first.optimizer.state_dict(), "step": first.step}
    return train_cpc(features, cfg, device, steps=steps, resume=state, progress=False).audio_per_second


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--tiny", action="store_true", help="configs/tiny.yaml instead of configs/default.yaml")
    parser.add_argument("--steps", type=int, default=None, help="timed training steps (default 50, tiny 20)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--segments", type=int, default=None, help="3 s segments in the pool (default 512, tiny 64)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here; use --device cpu --tiny")

    cfg = load_config(CONFIG_DIR / ("tiny.yaml" if args.tiny else "default.yaml")).models.cpc
    steps = args.steps or (20 if args.tiny else 50)
    count = args.segments or (64 if args.tiny else 512)
    name = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; config: {'tiny' if args.tiny else 'default'} "
          f"(batch {cfg.batch_size} x {cfg.window_s}s, {cfg.n_mels} mels, K={cfg.predict_steps}, "
          f"{cfg.n_negatives} negatives, bf16={cfg.bf16})")

    waves = synthetic_segments(count, 3.0, cfg.sample_rate)
    pool_seconds = count * 3.0
    features, feat_s = timed(lambda: log_mel_batches(waves, cfg, args.device))
    feat_tput = pool_seconds / feat_s
    print(f"log-mel features: {feat_tput:,.0f} s of audio per second")

    measured = train_throughput(features, cfg, args.device, steps, args.warmup)
    baseline = train_throughput(features, cfg.model_copy(update={"bf16": False}), args.device, steps, args.warmup)
    print(f"training: {measured:,.0f} s of audio per second "
          f"(baseline float32 in this run: {baseline:,.0f}; ratio {measured / baseline:.2f}x)")

    model = train_cpc(features, cfg, args.device, steps=1, progress=False).model
    embed_features(model, features[:8], cfg, args.device)  # warm-up
    _, embed_s = timed(lambda: embed_features(model, features, cfg, args.device))
    embed_tput = pool_seconds / embed_s
    print(f"embedding: {embed_tput:,.0f} s of audio per second")

    # A night trains on today's audio plus replay of earlier days (replay_ratio per segment).
    train_pool = DAY_SECONDS * (1 + cfg.replay_ratio)
    night = night_steps(train_pool, cfg)
    train_audio = night * cfg.batch_size * cfg.window_s
    times = {"features": DAY_SECONDS * (1 + cfg.replay_ratio) / feat_tput,
             "training": train_audio / measured, "embedding": DAY_SECONDS / embed_tput}
    print(f"16-hour day at this config: {night} steps ({train_audio / 3600:.1f} h of crops); "
          + ", ".join(f"{k} {v / 60:.1f} min" for k, v in times.items())
          + f"; total {sum(times.values()) / 60:.1f} min (WAV reading not included)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
