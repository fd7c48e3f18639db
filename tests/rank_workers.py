"""Each trainer on a fixed tiny input, in one process or as the ranks of ``torchrun``.

    python tests/rank_workers.py jepa,cpc OUT.json                # one process
    SLEEP_RANKS_NIGHT=1 python -m torch.distributed.run --standalone --nproc-per-node 2 \\
        tests/rank_workers.py jepa,cpc OUT.json                   # two, over gloo

Rank 0 calls the trainer through :func:`models.together.together` exactly as a night's stage
does; the other ranks :func:`models.together.follow`. Rank 0 writes each trainer's loss curve
to ``OUT.json`` (and the JEPA checkpoint beside it), for ``tests/test_ranks.py`` to compare.
"""
from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from core.config import CONFIG_DIR, load_config  # noqa: E402
from models.distributed import group_ranks  # noqa: E402
from models.together import follow, join, launched, release, together  # noqa: E402

DATE = dt.date(2026, 1, 15)


def _frames(n: int, size: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)


def jepa(out: Path) -> list[float]:
    from models.vision.train import train_night

    cfg = load_config(CONFIG_DIR / "tiny.yaml").models.jepa.model_copy(update={"steps": 8, "warmup_steps": 2})
    result = together(train_night, cfg, _frames(40, cfg.img_size), _frames(12, cfg.img_size), date=DATE,
                            checkpoint_dir=out.parent / "jepa", device="cpu", progress=False)
    return result.losses


def _vectors(n: int, dim: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def cpc(out: Path) -> list[float]:
    from models.audio.train import train_cpc

    cfg = load_config(CONFIG_DIR / "tiny.yaml").models.cpc.model_copy(update={"log_every": 1})
    g = torch.Generator().manual_seed(0)
    features = [torch.randn(cfg.n_mels, 200, generator=g).half() for _ in range(6)]
    result = together(train_cpc, features, cfg, "cpu", seed=3, steps=8, progress=False)
    return [entry["loss"] for entry in result.history]


def align(out: Path) -> list[float]:
    from models.align.train import train_alignment

    cfg = load_config(CONFIG_DIR / "tiny.yaml").models.align.model_copy(update={"batch_size": 15})
    vision, audio = _vectors(45, 24, 1), _vectors(45, 16, 2)
    result = together(train_alignment, vision, audio, cfg, "cpu", seed=3, steps=21, progress=False)
    return [entry["loss"] for entry in result.history]


def sae(out: Path) -> list[float]:
    from models.sae.train import train_sae

    cfg = load_config(CONFIG_DIR / "tiny.yaml").models.sae
    result = together(train_sae, _vectors(200, 24, 4), cfg, "cpu", seed=3, steps=21, progress=False)
    return [entry["mse"] for entry in result.history]


def reconstruct(out: Path) -> list[float]:
    from models.reconstruct.train import train_reconstructors

    cfg = load_config(CONFIG_DIR / "tiny.yaml").models.reconstruct.model_copy(update={"batch_size": 15})
    bank = _vectors(12, 24, 5)
    targets = np.arange(60) % 12
    fragments = bank[targets] + 0.5 * _vectors(60, 24, 6)
    result = together(train_reconstructors, bank, fragments, targets, cfg, "cpu", seed=3, steps=21,
                            progress=False)
    return [loss for variant in sorted(result.history) for loss in result.history[variant]]


def dream(out: Path) -> list[float]:
    from dream.train import train_decoder

    cfg = load_config(CONFIG_DIR / "tiny.yaml").dream.model_copy(update={"log_every": 1, "max_minutes": None})
    result = together(train_decoder, _frames(20, cfg.image_size), _vectors(20, 24, 7), cfg, "cpu", steps=6,
                            progress=False)
    return result.losses


TRAINERS = {"jepa": jepa, "cpc": cpc, "align": align, "sae": sae, "reconstruct": reconstruct, "dream": dream}


def main() -> int:
    names, out = sys.argv[1].split(","), Path(sys.argv[2])
    torch.set_num_threads(1)
    if launched():
        join("cpu", out.parent)
        if not group_ranks().main:
            follow()
            release()
            return 0
    try:
        curves = {name: [float(v) for v in np.asarray(TRAINERS[name](out), dtype=np.float64)] for name in names}
        out.write_text(json.dumps({"losses": curves, "world": group_ranks().world}))
    finally:
        release()
    return 0


if __name__ == "__main__":
    sys.exit(main())
