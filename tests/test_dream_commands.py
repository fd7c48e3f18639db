"""``sleep.py dream`` and ``sleep.py blend`` on a tiny night of FFmpeg scenes: our decoder, and
Stable unCLIP (a tiny random pipeline saved to disk) fed stored OpenCLIP vectors."""
from __future__ import annotations

import datetime as dt
import json
import logging

import numpy as np
import pytest
from conftest import run_cli
from jepa_media import SCENES, insert_day, make_scene_frames
from PIL import Image

from core.config import CONFIG_DIR
from core.errors import UsageError
from core.paths import Paths
from memory.db import make_sessionmaker, open_database
from stages import Night

DAY = dt.date(2026, 1, 15)


@pytest.fixture(scope="module")
def night_root(tmp_path_factory):
    """Three scenes, 8 frames each; the tiny vision, reconstruct and dream stages."""
    from core.config import load_config
    from stages import dream as dream_stage
    from stages import reconstruct as reconstruct_stage
    from stages import vision as vision_stage

    root = tmp_path_factory.mktemp("dreams") / "root"
    root.mkdir()
    cfg = load_config(CONFIG_DIR / "tiny.yaml")
    paths = Paths.at(root)
    engine = open_database(paths.database)
    Session = make_sessionmaker(engine)
    insert_day(Session, root, DAY, make_scene_frames(paths.frames(DAY), scenes=SCENES[:3], seconds=2, fps=4))
    night = Night(DAY, cfg, paths, engine, Session, "cpu", logging.getLogger("test"))
    for name, stage in (("vision", vision_stage), ("reconstruct", reconstruct_stage), ("dream", dream_stage)):
        night.results[name] = stage.run(night)
        assert night.results[name]["trained"], night.results[name]
    engine.dispose()
    return root


def test_blend_and_dream_write_pictures_beside_their_sources(night_root):
    tiny = str(CONFIG_DIR / "tiny.yaml")
    out = run_cli("blend", "--root", str(night_root), "--config", tiny, "--a", "1", "--b", "3", "--mix", "0.25",
                  "--json")
    assert out.returncode == 0, out.stderr
    blend = json.loads(out.stdout)
    assert blend["kind"] == "blend" and blend["backend"] == "ours" and blend["vectors"] == "vision jepa@2026-01-15"
    assert blend["completed_by"] in ("fragment", "mlp", "hopfield", "pattern")
    assert [d["mix"] for d in blend["dreams"]] == [0.25]
    assert [s["clip_id"] for s in blend["sources"]] == [1, 3] and all(s["picture"] for s in blend["sources"])
    for file in [d["file"] for d in blend["dreams"]] + [s["picture"] for s in blend["sources"]]:
        with Image.open(night_root / file) as image:
            assert image.mode == "RGB"
    with Image.open(night_root / blend["dreams"][0]["file"]) as image:
        assert image.size == (16, 16)  # the tiny decoder's size
    assert json.loads((night_root / blend["folder"] / "dream.json").read_text())["dreams"] == blend["dreams"]

    out = run_cli("dream", "--root", str(night_root), "--config", tiny, "--a", "2", "--b", "1", "--n", "3")
    assert out.returncode == 0, out.stderr
    assert "3 blend picture(s) of clip 2 (2026-01-15) and clip 1 (2026-01-15)" in out.stdout
    assert "share of B 0.25" in out.stdout and "share of B 0.75" in out.stdout

    from api.dreams import dream_clips

    alone = dream_clips(night_root, 2, n=2, config=tiny, seed=5)
    again = dream_clips(night_root, 2, n=2, config=tiny, seed=5)
    pictures = [[np.asarray(Image.open(night_root / d["file"])) for d in r["dreams"]] for r in (alone, again)]
    assert alone["kind"] == "dream" and len(pictures[0]) == 2
    assert all(np.array_equal(a, b) for a, b in zip(*pictures))  # the same seed dreams the same pictures

    for bad, message in (({"a": 99}, "clip 99: no such clip"), ({"a": 1, "n": 0}, "--n 0"),
                         ({"a": 1, "b": 2, "mixes": [1.5]}, "--mix 1.5")):
        with pytest.raises(UsageError, match=message):
            dream_clips(night_root, config=tiny, **bad)
    out = run_cli("dream", "--root", str(night_root), "--config", tiny, "--a", "99")
    assert out.returncode == 2 and "clip 99: no such clip" in out.stderr


def test_blend_with_stable_unclip_decodes_the_stored_openclip_vectors(night_root, tmp_path):
    from test_unclip import WIDTH, _tiny_pipeline

    from memory.store import EmbeddingRow, write_embeddings
    from models.openclip import weights_version

    folder = tmp_path / "unclip"
    _tiny_pipeline(tmp_path, text=False).save_pretrained(folder)
    weights = tmp_path / "open_clip.bin"
    weights.write_bytes(b"weights the test never loads: only their hash names the version")
    overrides = [f"models.openclip.weights={weights}", "dream.backend=unclip", f"dream.unclip.path={folder}",
                 "dream.unclip.steps=2", "dream.unclip.dtype=float32"]
    from core.config import load_config

    cfg = load_config(CONFIG_DIR / "tiny.yaml", overrides)
    version = weights_version(cfg.models.openclip)
    engine = open_database(Paths.at(night_root).database)
    vectors = np.random.default_rng(0).normal(size=(3, WIDTH)).astype(np.float32)
    write_embeddings(engine, Paths.at(night_root), space="openclip", model_version=version, date=DAY.isoformat(),
                     rows=[EmbeddingRow(c, "vision") for c in (1, 2, 3)], vectors=vectors)
    engine.dispose()

    from api.dreams import dream_clips

    result = dream_clips(night_root, 1, 2, mixes=[0.5], config=cfg)
    assert result["backend"] == "unclip" and result["vectors"] == f"openclip {version}"
    with Image.open(night_root / result["dreams"][0]["file"]) as image:
        assert image.size == (8, 8)  # the tiny pipeline's size

    # The night's dream stage with the same backend: Stable unCLIP draws the dreams, ours is not trained.
    from stages import dream as dream_stage

    engine = open_database(Paths.at(night_root).database)
    night = Night(DAY, cfg, Paths.at(night_root), engine, make_sessionmaker(engine), "cpu", logging.getLogger("t"))
    staged = dream_stage.run(night)
    engine.dispose()
    assert staged["backend"] == "unclip" and not staged["trained"]
    assert [d["kind"] for d in staged["dreams"]] == ["memory", "memory", "blend", "blend"]  # tiny: 4 dreams
    for item in staged["dreams"]:
        with Image.open(night_root / "reports" / DAY.isoformat() / item["file"]) as image:
            assert image.size == (128, 128)  # saved at the report's panel size
