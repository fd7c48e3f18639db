"""Training throughput of our I-JEPA step against a stock timm ViT of the same size.

Both are measured in the same run on the same device: our full step (random resized
crop, masks, EMA target forward, context encoder, predictor, smooth L1, backward, AdamW,
EMA update) and timm's ``VisionTransformer`` (same image size, patch, width, depth and
heads, no class token, average pool) doing forward + backward + AdamW on the same batch.
Prints images per second of each and their ratio (ours / timm; the issue's target is
>= 0.8). Needs ``timm`` (a bench-only dependency).

    python bench/jepa.py                      # CUDA, configs/default.yaml sizes, bf16, compile
    python bench/jepa.py --device cpu --tiny --steps 2 --warmup 1   # smoke test
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.config import CONFIG_DIR, load_config
from models.vision.train import JepaTrainer


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(step, steps: int, warmup: int, device: torch.device) -> float:
    for _ in range(warmup):
        step()
    _sync(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return time.perf_counter() - started


def bench_ours(cfg, batch: torch.Tensor, steps: int, warmup: int,
               device: torch.device) -> tuple[float, str | None]:
    """Seconds for ``steps`` JEPA steps, and why compilation was given up (None if it was not)."""
    trainer = JepaTrainer(cfg, str(device))
    total = steps + warmup
    i = iter(range(total))
    seconds = _timed(lambda: trainer.step(batch, next(i), total), steps, warmup, device)
    return seconds, trainer.compile_fallback


def bench_timm(cfg, batch: torch.Tensor, steps: int, warmup: int, device: torch.device) -> float:
    from timm.models.vision_transformer import VisionTransformer

    model = VisionTransformer(img_size=cfg.img_size, patch_size=cfg.patch_size, embed_dim=cfg.dim,
                              depth=cfg.depth, num_heads=cfg.heads, mlp_ratio=cfg.mlp_ratio,
                              num_classes=0, class_token=False, global_pool="avg").to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    on_cuda = device.type == "cuda"
    forward = torch.compile(model) if on_cuda and cfg.compile else model
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if on_cuda and cfg.bf16
                else contextlib.nullcontext())
    mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1) * 255

    def step():
        images = (batch.float() - mean) / std
        with autocast:
            loss = forward(images).float().pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return _timed(step, steps, warmup, device)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--tiny", action="store_true", help="use configs/tiny.yaml sizes")
    parser.add_argument("--steps", type=int, default=50, help="timed steps of each")
    parser.add_argument("--warmup", type=int, default=15, help="untimed steps first (compilation)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the config's")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile for both")
    parser.add_argument("--static-masks", action="store_true",
                        help="models.jepa.static_masks: one token count every step (one compiled graph)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device here; use --device cpu --tiny for a smoke run")
    cfg = load_config(CONFIG_DIR / ("tiny.yaml" if args.tiny else "default.yaml")).models.jepa
    update = {"compile": cfg.compile and not args.no_compile, "static_masks": args.static_masks}
    if args.batch_size:
        update["batch_size"] = args.batch_size
    cfg = cfg.model_copy(update=update)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    gen = torch.Generator().manual_seed(0)
    batch = torch.randint(0, 256, (cfg.batch_size, 3, cfg.img_size, cfg.img_size), dtype=torch.uint8,
                          generator=gen).to(device)

    seconds, compile_fallback = bench_ours(cfg, batch, args.steps, args.warmup, device)
    ours = cfg.batch_size * args.steps / seconds
    timm = cfg.batch_size * args.steps / bench_timm(cfg, batch, args.steps, args.warmup, device)
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "config": "tiny" if args.tiny else "default",
        "img_size": cfg.img_size, "patch_size": cfg.patch_size, "dim": cfg.dim, "depth": cfg.depth,
        "heads": cfg.heads, "batch_size": cfg.batch_size, "bf16": cfg.bf16 and device.type == "cuda",
        "compile": cfg.compile and device.type == "cuda", "steps": args.steps,
        "compile_fallback": compile_fallback,
        "jepa_images_per_s": round(ours, 1),
        "timm_vit_images_per_s": round(timm, 1),
        "ratio": round(ours / timm, 3),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['device']}, {result['config']} sizes ({cfg.img_size} px, patch {cfg.patch_size}, "
              f"dim {cfg.dim}, depth {cfg.depth}, batch {cfg.batch_size}, bf16 {result['bf16']}, "
              f"compile {result['compile']})")
        print(f"  our JEPA train step : {ours:9.1f} images/s")
        print(f"  timm ViT fwd+bwd    : {timm:9.1f} images/s")
        print(f"  ratio               : {ours / timm:9.3f}  (target >= 0.8)")
        if compile_fallback:
            print(f"  note: our step gave up torch.compile ({compile_fallback}); it was timed eager")
    return result


if __name__ == "__main__":
    main()
