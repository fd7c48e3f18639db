"""Free-text search with OpenCLIP weights on disk: stage ``openclip`` and ``query --text``.

No real CLIP weights can be fetched here, so the tests build a tiny OpenCLIP architecture
(its own JSON config), save its random weights to a file, and point ``models.openclip`` at
them: everything a user's ViT-B-32 file goes through, except that the words mean nothing.
"""
from __future__ import annotations

import datetime as dt
import json
import logging

import pytest
from conftest import run_cli
from jepa_media import SCENES, insert_day, make_scene_frames

from core.errors import ConfigError
from core.paths import Paths
from memory.db import make_sessionmaker, open_database
from memory.store import load_vectors, search
from stages import Night

DAY1, DAY2 = dt.date(2026, 1, 15), dt.date(2026, 1, 16)
TINY = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    import open_clip
    import torch

    folder = tmp_path_factory.mktemp("clip")
    config = folder / "sleep-tiny-clip.json"
    config.write_text(json.dumps(TINY))
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    model = open_clip.create_model("sleep-tiny-clip", pretrained=None)
    torch.save(model.state_dict(), folder / "tiny-clip.pt")
    return {"weights": str(folder / "tiny-clip.pt"), "model": "sleep-tiny-clip", "model_config_file": str(config)}


def with_clip(cfg, **clip):
    models = cfg.models.model_copy(update={"openclip": cfg.models.openclip.model_copy(update=clip)})
    return cfg.model_copy(update={"models": models})


def _night(date, cfg, root):
    paths = Paths.at(root)
    engine = open_database(paths.database)
    return Night(date, cfg, paths, engine, make_sessionmaker(engine), "cpu", logging.getLogger("test"))


def test_frames_of_two_nights_share_one_version_and_text_finds_both(root, tiny_cfg, weights):
    from models.openclip import load_clip
    from stages.openclip import run

    cfg = with_clip(tiny_cfg, **weights)
    first, second = _night(DAY1, cfg, root), _night(DAY2, cfg, root)
    made1 = insert_day(first.Session, root, DAY1, make_scene_frames(first.paths.frames(DAY1), scenes=SCENES[:3],
                                                                     seconds=2, fps=2))
    made2 = insert_day(second.Session, root, DAY2, make_scene_frames(second.paths.frames(DAY2), scenes=SCENES[3:5],
                                                                      seconds=2, fps=2))
    one, two = run(first), run(second)
    assert one["model_version"] == two["model_version"] and one["model_version"].startswith("openclip@sleep-tiny-clip-")
    assert one["embedded"] == sum(len(f) for f in made1.values()) and one["clips"] == 3 and one["failed"] == []
    rows, vectors = load_vectors(first.engine, first.paths, space="openclip_frame", model_version=one["model_version"],
                                 date=DAY1.isoformat())
    assert len(rows) == one["embedded"] and vectors.shape[1] == 32
    assert run(first) == one  # safe to run twice

    clip = load_clip(cfg.models.openclip, "cpu")
    hits = search(first.engine, first.paths, space="openclip", query=clip.embed_text("a red bicycle"), topk=10)
    assert {h.clip_id for h in hits} == set(made1) | set(made2)  # one version, both nights

    cli = run_cli("query", "--text", "a red bicycle", "--json", "--root", str(root), "--config", "configs/tiny.yaml",
                  "--set", f"models.openclip.weights={weights['weights']}", "--set", f"models.openclip.model={weights['model']}",
                  "--set", f"models.openclip.model_config_file={weights['model_config_file']}")
    assert cli.returncode == 0, cli.stderr[-2000:]
    assert [h["clip_id"] for h in json.loads(cli.stdout)] == [h.clip_id for h in hits]


def test_without_weights_the_stage_rests_and_text_queries_say_why(root, tiny_cfg):
    from stages.openclip import run

    night = _night(DAY1, tiny_cfg, root)
    assert run(night)["note"].startswith("no OpenCLIP weights configured")
    cli = run_cli("query", "--text", "a dog", "--root", str(root), "--config", "configs/tiny.yaml")
    assert cli.returncode == 2 and "models.openclip.weights is not set" in cli.stderr


def test_missing_or_wrong_weights_fail_the_stage_naming_the_file(root, tiny_cfg, weights, tmp_path):
    from stages.openclip import run

    missing = tmp_path / "nowhere.pt"
    with pytest.raises(ConfigError, match="nowhere.pt: no such file"):
        run(_night(DAY1, with_clip(tiny_cfg, **{**weights, "weights": str(missing)}), root))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not weights")
    with pytest.raises(ConfigError, match="junk.pt does not load as sleep-tiny-clip"):
        run(_night(DAY1, with_clip(tiny_cfg, **{**weights, "weights": str(junk)}), root))
