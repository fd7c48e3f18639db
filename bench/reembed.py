"""Re-embedding throughput: kept keyframes through a vision encoder, against bare JPEG decoding.

Builds N keyframes as the ``keep`` stage stores them (JPEG, short side
``memory.keep.keyframe_size``, from FFmpeg's testsrc2), then times, in the same run:

- the baseline: bare JPEG decoding of the same files (``torchvision.io.decode_jpeg``);
- re-embedding: what ``stages.reembed`` does per day, decode + resize to the encoder's size
  (``models.vision.frames.decode_frames``) and the JEPA target encoder's forward
  (``models.vision.embed.embed_frames``), in batches of ``memory.reembed.batch_size``.

The encoder has the config's shape with untrained weights (the same arithmetic as a trained
one). Prints keyframes per second of each, their ratio, the projected time for a year of
frames (21M: 16 h a day at 1 fps) and of keyframes (one per clip), and the storage one
version of every re-embedded space takes for a year (float16 rows, as ``memory.shards``).

    python bench/reembed.py                     # configs/default.yaml, and --tiny beside it
    python bench/reembed.py --n 64 --device cpu # smoke test
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.config import CONFIG_DIR, load_config
from ingest.binaries import ffmpeg_path
from models.audio.cpc import CpcModel
from models.vision.embed import embed_frames
from models.vision.frames import decode_frames
from models.vision.jepa import build_encoder

YEAR_FRAMES = 21_000_000  # 16 h a day, 1 frame a second, 365 days
HOURS_A_DAY = 16


def make_keyframes(folder: Path, n: int, short_side: int) -> list[Path]:
    """``n`` JPEG keyframes of testsrc2 at 4:3, short side ``short_side``."""
    width = (short_side * 4 // 3) // 2 * 2
    subprocess.run([ffmpeg_path(), "-v", "error", "-y", "-f", "lavfi", "-i",
                    f"testsrc2=size={width}x{short_side}:rate=25", "-frames:v", str(n), "-q:v", "3",
                    str(folder / "k%05d.jpg")], check=True, capture_output=True)
    return sorted(folder.glob("k*.jpg"))


def bare_decode(paths: list[Path]) -> float:
    from torchvision.io import ImageReadMode, decode_jpeg, read_file

    started = time.perf_counter()
    for path in paths:
        decode_jpeg(read_file(str(path)), mode=ImageReadMode.RGB)
    return time.perf_counter() - started


def reembed_seconds(paths: list[Path], cfg, device: str) -> float:
    jepa, batch = cfg.models.jepa, cfg.memory.reembed.batch_size
    torch.manual_seed(0)
    encoder = build_encoder(jepa).to(device).eval()
    warm = decode_frames(paths[:2], jepa.img_size, device, progress=False)
    embed_frames(encoder, warm.images, batch_size=batch, bf16=jepa.bf16)
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    cache = decode_frames(paths, jepa.img_size, device, chunk=batch, progress=False)
    embed_frames(encoder, cache.images, batch_size=batch, bf16=jepa.bf16)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def storage_per_version(cfg) -> dict:
    """Bytes a year of one version takes, per space, at 2 bytes a value (float16 shards)."""
    clips = HOURS_A_DAY * 3600 / cfg.ingest.clip_seconds * 365
    jepa, align, sae = cfg.models.jepa.dim, cfg.models.align.dim, cfg.models.sae.latents
    cpc = CpcModel(cfg.models.cpc).embedding_dim
    # rows per clip: vision_frame 1 (the keyframe), vision 1, audio 1, shared 2 and sae up
    # to 2 (one per sense); sae rows are stored dense, latents wide.
    widths = {"vision_frame": jepa, "vision": jepa, "audio": cpc, "shared": 2 * align, "sae": 2 * sae}
    return {"clips_per_year": int(clips), **{s: int(clips * w * 2) for s, w in widths.items()}}


def measure(name: str, config: Path, n: int, device: str, folder: Path) -> dict:
    cfg = load_config(config)
    (folder / name).mkdir()
    keyframes = make_keyframes(folder / name, n, cfg.memory.keep.keyframe_size)
    baseline = bare_decode(keyframes)
    seconds = reembed_seconds(keyframes, cfg, device)
    rate, base_rate = n / seconds, n / baseline
    storage = storage_per_version(cfg)
    return {
        "config": name, "device": device, "keyframes": n, "keyframe_size": cfg.memory.keep.keyframe_size,
        "img_size": cfg.models.jepa.img_size, "batch_size": cfg.memory.reembed.batch_size,
        "keyframes_per_second": round(rate, 1), "bare_decode_per_second": round(base_rate, 1),
        "ratio_reembed_to_decode": round(rate / base_rate, 4),
        "hours_for_21M_frames": round(YEAR_FRAMES / rate / 3600, 1),
        "hours_for_a_year_of_keyframes": round(storage["clips_per_year"] / rate / 3600, 1),
        "storage_per_version_GB": {k: round(v / 1e9, 2) for k, v in storage.items() if k != "clips_per_year"},
        "storage_per_version_GB_total": round(sum(v for k, v in storage.items() if k != "clips_per_year") / 1e9, 1),
        "keyframes_per_year": storage["clips_per_year"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256, help="keyframes to re-embed (default 256)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu or cuda (default: cuda when there is one)")
    parser.add_argument("--no-tiny", action="store_true", help="measure configs/default.yaml only")
    args = parser.parse_args()
    configs = [("default", CONFIG_DIR / "default.yaml")] + ([] if args.no_tiny else [("tiny", CONFIG_DIR / "tiny.yaml")])
    with tempfile.TemporaryDirectory() as tmp:
        for name, config in configs:
            result = measure(name, config, args.n, args.device, Path(tmp))
            print(json.dumps(result, indent=2), flush=True)


if __name__ == "__main__":
    main()
