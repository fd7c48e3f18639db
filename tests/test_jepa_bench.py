"""bench/jepa.py runs end to end (CPU, tiny sizes, two steps); the GPU figure is its real job."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


def test_bench_smoke_on_cpu(capsys):
    pytest.importorskip("timm")
    path = Path(__file__).resolve().parent.parent / "bench" / "jepa.py"
    spec = importlib.util.spec_from_file_location("bench_jepa", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.main(["--device", "cpu", "--tiny", "--steps", "2", "--warmup", "1", "--json"])
    assert result["jepa_images_per_s"] > 0 and result["timm_vit_images_per_s"] > 0
    assert result["ratio"] == pytest.approx(result["jepa_images_per_s"] / result["timm_vit_images_per_s"], rel=0.01)
    assert '"ratio"' in capsys.readouterr().out


def test_attention_bench_smoke_on_cpu(tmp_path, monkeypatch, capsys):
    """bench/jepa_attention.py trains once per attention variant (CPU, tiny sizes, two steps).
    It sets the trainer's list of attention kernels, so the test puts the list back."""
    import sys

    from PIL import Image

    from models.vision import train

    for i in range(4):
        Image.new("RGB", (80, 60), (40 * i, 90, 200 - 40 * i)).save(tmp_path / f"{i}.jpg")
    path = Path(__file__).resolve().parent.parent / "bench" / "jepa_attention.py"
    spec = importlib.util.spec_from_file_location("bench_jepa_attention", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setattr(train, "TRAINING_ATTENTION", train.TRAINING_ATTENTION)
    config = Path(__file__).resolve().parent.parent / "configs" / "tiny.yaml"
    monkeypatch.setattr(sys, "argv", ["jepa_attention.py", str(tmp_path), "--steps", "2", "--device", "cpu",
                                      "--config", str(config)])
    assert bench.main() == 0
    out = capsys.readouterr().out
    assert "4 frames" in out
    assert out.count("step(s) with a gradient that was not finite") == 2
