"""The audio and align stages over a night's database rows, and the query encoders.

The stages write to the real memory store; ``test_night_end_to_end`` also runs the whole
night through ingest and vision.
"""
from __future__ import annotations

import datetime as dt
import logging
import types

import numpy as np
import pytest
import soundfile
from audio_scenes import RATE, SCENES, clips_of, make_scene, pixel_features
from conftest import make_media

from core.errors import UsageError
from core.paths import Paths
from memory.db import make_sessionmaker, open_database
from memory.schema import AudioSegment, Clip, Source
from memory.store import EmbeddingRow, load_vectors, spaces, write_embeddings
from stages import Night

DAY1, DAY2 = dt.date(2026, 1, 14), dt.date(2026, 1, 15)


def stored(night: Night, space: str, model_version: str, date: str) -> tuple[list[EmbeddingRow], np.ndarray]:
    """What the stages wrote to the memory store for one key (KeyError when nothing)."""
    rows, vectors = load_vectors(night.engine, night.paths, space=space, model_version=model_version, date=date)
    if not rows:
        raise KeyError((space, model_version, date))
    return rows, vectors


@pytest.fixture(scope="module")
def scenes():
    return [make_scene(i, 12) for i in range(len(SCENES))]


def add_day(paths: Paths, Session, day: dt.date, scenes, *, silent_video: bool = True) -> dict[int, dict]:
    """Rows and files as ingest writes them: one source per scene (four 3 s clips, each with
    its 16 kHz WAV segment), plus a video without audio (clips, no segments)."""
    clips: dict[int, dict] = {}
    seg_dir = paths.audio_segments(day)
    seg_dir.mkdir(parents=True, exist_ok=True)
    with Session() as session:
        for scene in scenes:
            source = Source(date=day.isoformat(), path=f"data/raw/{day}/scene{scene.index}.mp4",
                            content_hash=f"{day}-{scene.index}", size_bytes=1, has_video=True, has_audio=True)
            session.add(source)
            session.flush()
            for j, (wave, frames) in enumerate(clips_of(scene)):
                clip = Clip(source_id=source.id, date=day.isoformat(), index=j, start_s=3.0 * j, end_s=3.0 * j + 3)
                session.add(clip)
                session.flush()
                wav = seg_dir / f"scene{scene.index}_{j:04d}.wav"
                soundfile.write(wav, wave, RATE, subtype="PCM_16")
                session.add(AudioSegment(clip_id=clip.id, path=str(wav.relative_to(paths.root)),
                                         seconds=3.0, sample_rate=RATE))
                clips[clip.id] = {"scene": scene.index, "audio": True, "vision": pixel_features(frames)}
        if silent_video:
            source = Source(date=day.isoformat(), path=f"data/raw/{day}/silent.mp4", content_hash=f"{day}-silent",
                            size_bytes=1, has_video=True, has_audio=False)
            session.add(source)
            session.flush()
            for j in range(3):
                clip = Clip(source_id=source.id, date=day.isoformat(), index=j, start_s=3.0 * j, end_s=3.0 * j + 3)
                session.add(clip)
                session.flush()
                clips[clip.id] = {"scene": None, "audio": False, "vision": np.full(576, 0.5, np.float32)}
        session.commit()
    return clips


def make_night(root, cfg, day: dt.date) -> Night:
    paths = Paths.at(root)
    engine = open_database(paths.database)
    return Night(day, cfg, paths, engine, make_sessionmaker(engine), "cpu", logging.getLogger("test"))


def with_audio(cfg, **changes):
    """``cfg`` with some ``models`` keys changed (``cpc__min_steps=5`` reaches into sub-sections)."""
    audio = cfg.models
    for key, value in changes.items():
        if "__" in key:
            section, field = key.split("__")
            audio = audio.model_copy(update={section: getattr(audio, section).model_copy(update={field: value})})
        else:
            audio = audio.model_copy(update={key: value})
    return cfg.model_copy(update={"models": audio})


@pytest.fixture(scope="module")
def night1(tmp_path_factory, scenes):
    """One night over all eight scenes plus a silent video: the audio stage, then align.

    The vision space is filled by the test with its pixel stand-in for the vision model
    (see test_align.py). A quarter of the clips is held out so that several are measured.
    """
    from core.config import CONFIG_DIR, load_config
    from stages import align as align_stage
    from stages import audio as audio_stage

    cfg = with_audio(load_config(CONFIG_DIR / "tiny.yaml"), heldout_fraction=0.25)
    root = tmp_path_factory.mktemp("night1")
    night = make_night(root, cfg, DAY1)
    clips = add_day(night.paths, night.Session, DAY1, scenes)
    ids = sorted(clips)
    write_embeddings(night.engine, night.paths, space="vision", model_version="jepa@2026-01-14",
                     date="2026-01-14", rows=[EmbeddingRow(c, "vision") for c in ids],
                     vectors=np.stack([clips[c]["vision"] for c in ids]))
    night.results["audio"] = audio_stage.run(night)
    night.results["align"] = align_stage.run(night)
    return types.SimpleNamespace(night=night, cfg=cfg, root=root, clips=clips,
                                 audio=night.results["audio"], align=night.results["align"])


def test_audio_stage_embeds_every_clip_with_audio_and_no_other(night1):
    rows, vectors = stored(night1.night, "audio", "cpc@2026-01-14", "2026-01-14")
    with_sound = sorted(c for c, info in night1.clips.items() if info["audio"])
    assert sorted(r.clip_id for r in rows) == with_sound  # the silent video's clips are absent
    assert {r.modality for r in rows} == {"audio"}
    assert vectors.shape == (32, night1.cfg.models.cpc.context_hidden)
    result = night1.audio
    assert result["segments"] == 32 and result["skipped"] == [] and result["resumed_from"] is None
    metrics = result["metrics"]
    assert len(metrics["accuracy_per_step"]) == night1.cfg.models.cpc.predict_steps
    assert metrics["evaluated_on"] == "held-out clips" and metrics["loss"] < metrics["chance_loss"]
    assert metrics["distill_loss"] == {"weight": 1.0, "off": "first night: no earlier model to distill from"}
    assert (night1.root / "checkpoints" / "cpc" / "2026-01-14.pt").is_file()
    assert (night1.root / "checkpoints" / "cpc" / "latest").read_text().strip() == "2026-01-14"


def test_align_stage_writes_every_clips_senses_and_measures_recall(night1):
    rows, vectors = stored(night1.night, "shared", "align@2026-01-14", "2026-01-14")
    ids = sorted(night1.clips)
    by_modality = {m: sorted(r.clip_id for r in rows if r.modality == m) for m in ("vision", "audio")}
    assert by_modality["vision"] == ids  # the silent video's clips have a vision row ...
    assert by_modality["audio"] == sorted(c for c in ids if night1.clips[c]["audio"])  # ... and no audio row
    assert vectors.shape[1] == night1.cfg.models.align.dim
    result = night1.align
    assert result["pairs"] == 32 and result["heldout_pairs"] >= 2
    a2v = result["metrics"]["audio_to_video"]
    assert {"recall@1", "recall@5", "recall@10", "median_rank", "chance"} <= set(a2v)
    assert a2v["recall@1"] > a2v["chance"]["recall@1"]


def test_a_day_with_only_silent_video_writes_nothing_and_does_not_fail(root, tiny_cfg, scenes):
    from stages import audio as audio_stage

    night = make_night(root, tiny_cfg, DAY1)
    add_day(night.paths, night.Session, DAY1, [])
    result = audio_stage.run(night)
    assert result["segments"] == 0 and "note" in result
    assert spaces(night.engine) == []


def test_the_next_night_continues_the_model_replays_and_skips_a_broken_file(root, tiny_cfg, scenes):
    from stages import audio as audio_stage

    cfg = with_audio(tiny_cfg, cpc__min_steps=4, cpc__max_steps=4)
    first = make_night(root, cfg, DAY1)
    add_day(first.paths, first.Session, DAY1, scenes[:2])
    audio_stage.run(first)
    second = make_night(root, cfg, DAY2)
    add_day(second.paths, second.Session, DAY2, scenes[2:4])
    broken = sorted(second.paths.audio_segments(DAY2).glob("*.wav"))[0]
    broken.write_bytes(b"not a wav")
    result = audio_stage.run(second)
    assert [s["file"] for s in result["skipped"]] == [str(broken.relative_to(root))]
    assert result["embedded"] == 7
    assert result["resumed_from"] == "2026-01-14" and result["global_step"] == 8
    assert result["replay"]["days"] == ["2026-01-14"] and result["replay"]["segments"] == 4  # 0.5 x 7, rounded
    assert result["replay"]["per_day"] == {"2026-01-14": 4}
    distill = result["metrics"]["distill_loss"]
    assert distill["weight"] == 1.0 and distill["curve"] and 0 <= distill["final"] <= 4
    # Running the second night again starts from the first night's model again.
    again = audio_stage.run(second)
    assert again["resumed_from"] == "2026-01-14" and again["global_step"] == 8


def test_query_by_sound_finds_the_scene_it_came_from(night1, tmp_path):
    """A new FFmpeg-made mp4 of each scene's sound; its nearest stored moment by cosine."""
    from stages.audio import encode_audio_file

    rows, vectors = stored(night1.night, "audio", "cpc@2026-01-14", "2026-01-14")
    hits = 0
    for i, (video, audio) in enumerate(SCENES):
        media = make_media(tmp_path / f"q{i}.mp4", seconds=3, video=video, audio=audio)
        version, vector = encode_audio_file(media, night1.cfg, night1.night.paths, "cpu")
        assert version == "cpc@2026-01-14" and np.linalg.norm(vector) == pytest.approx(1, abs=1e-5)
        hits += night1.clips[rows[int(np.argmax(vectors @ vector))].clip_id]["scene"] == i
    assert hits >= 6, f"{hits} of 8 sound queries found their own scene"


def test_query_of_a_file_without_audio_is_a_usage_error(night1, tmp_path):
    from stages.audio import encode_audio_file

    silent = make_media(tmp_path / "silent.mp4", seconds=2, audio=None)
    with pytest.raises(UsageError, match="no audio stream"):
        encode_audio_file(silent, night1.cfg, night1.night.paths, "cpu")


def test_queries_before_any_night_are_usage_errors(root, tiny_cfg, tmp_path):
    from stages.align import to_shared
    from stages.audio import encode_audio_file

    media = make_media(tmp_path / "a.wav", seconds=1, video=None)
    with pytest.raises(UsageError, match="no audio model yet"):
        encode_audio_file(media, tiny_cfg, Paths.at(root), "cpu")
    with pytest.raises(UsageError, match="no align model yet"):
        to_shared(np.ones(4), "vision", tiny_cfg, Paths.at(root), "cpu")


def test_an_image_finds_moments_that_sound_like_it_looks(night1, scenes):
    """``query --image --space shared --modality audio``: a scene's picture -> its sound.

    The picture's vector is the test's pixel stand-in for the vision model (see
    test_align.py); it goes through ``to_shared`` and is compared with the stored
    shared-space audio rows.
    """
    from stages.align import to_shared

    rows, shared = stored(night1.night, "shared", "align@2026-01-14", "2026-01-14")
    audio_rows = [i for i, r in enumerate(rows) if r.modality == "audio"]
    hits = 0
    for scene in scenes:
        version, vector = to_shared(pixel_features(scene.frames[:3]), "vision", night1.cfg, night1.night.paths, "cpu")
        assert version == "align@2026-01-14"
        best = audio_rows[int(np.argmax(shared[audio_rows] @ vector))]
        hits += night1.clips[rows[best].clip_id]["scene"] == scene.index
    assert hits >= 6, f"{hits} of 8 pictures found a clip of their own sound"
    with pytest.raises(UsageError, match="does not fit"):
        to_shared(np.ones(7), "vision", night1.cfg, night1.night.paths, "cpu")


def test_night_end_to_end(root, tiny_cfg, scenes):
    """Every stage through the runner on FFmpeg-made scenes (four with sound, one silent)."""
    from pipeline.runner import run_night

    raw = root / "data" / "raw" / DAY1.isoformat()
    for i, (video, audio) in enumerate(SCENES[:4]):
        make_media(raw / f"scene{i}.mp4", seconds=9, video=video, audio=audio)
    make_media(raw / "silent.mp4", seconds=6, video=SCENES[4][0], audio=None)
    cfg = tiny_cfg.model_copy(update={"models": tiny_cfg.models.model_copy(update={"heldout_fraction": 0.3})})
    outcome = run_night(DAY1, cfg, Paths.at(root))
    assert set(outcome.states.values()) == {"done"}, outcome.errors
    import json
    summary = json.loads((root / "reports" / DAY1.isoformat() / "summary.json").read_text())
    assert summary["sae"]["trained"] and summary["sae"]["input_version"] == "align@2026-01-14"
    assert summary["reconstruct"]["trained"] and summary["reconstruct"]["clips"] == 4 * 3 + 2

    from memory.db import open_database as open_db
    from memory.store import search
    from stages.audio import encode_audio_file

    paths = Paths.at(root)
    version, vector = encode_audio_file(raw / "scene0.mp4", cfg, paths, "cpu")
    engine = open_db(paths.database)
    hits = search(engine, paths, space="audio", query=vector, topk=100)
    assert hits and all(h.model_version == version for h in hits)
    assert not any(h.source_path.endswith("silent.mp4") for h in hits)  # no audio, no vector
    shared = search(engine, paths, space="shared", query=np.ones(cfg.models.align.dim, np.float32), topk=100,
                    modality="vision")
    assert any(h.source_path.endswith("silent.mp4") for h in shared)  # ... but its sight is in `shared`


def test_report_sections_show_the_figures_beside_chance(night1):
    from report.build import ReportContext
    from report.sections.align import render as render_align
    from report.sections.audio import render as render_cpc

    summary: dict = {"metrics": {}}
    for name in ("audio", "align"):
        result = dict(getattr(night1, name))
        summary["metrics"][name] = result.pop("metrics")
        summary[name] = result
    ctx = ReportContext(DAY1, night1.cfg, night1.night.paths)
    cpc_html = render_cpc(summary, ctx)
    assert "chance accuracy" in cpc_html and "<svg" in cpc_html and "cpc@2026-01-14" in cpc_html
    align_html = render_align(summary, ctx)
    a2v = summary["metrics"]["align"]["audio_to_video"]
    assert f"{a2v['recall@1']:.2f} ({a2v['chance']['recall@1']:.2f})" in align_html
    assert render_cpc({"metrics": {}}, ctx) is None


def test_sae_neurons_trace_scenes_and_the_next_night_continues_the_dictionary(night1, scenes):
    """Stage ``sae`` over night1's shared space (35 clips' sight, 32 clips' sound).

    A neuron's strongest moments should come from one scene: the share of each reported
    neuron's moments from its most common scene, averaged, against the same figure for
    moments drawn at random. Measured 2026-11-23 (tiny config): 0.944 against chance 0.417.
    """
    from stages import sae as sae_stage

    night = night1.night
    result = sae_stage.run(night)
    assert result["trained"] and result["input_version"] == night1.align["model_version"]
    assert result["rows"] == 35 + 32 and result["written"] + result["silent_rows"] == result["rows"]
    rows, vectors = stored(night, "sae", "sae@2026-01-14", "2026-01-14")
    assert len(rows) == result["written"] and vectors.shape[1] == night1.cfg.models.sae.latents
    assert int((vectors > 0).sum(1).max()) <= night1.cfg.models.sae.k

    scene_of = {c: -1 if v["scene"] is None else v["scene"] for c, v in night1.clips.items()}  # -1: silent video
    purity = []
    for neuron in result["neurons"]:
        found = [scene_of[m["clip_id"]] for m in neuron["top"]]
        purity.append(max(found.count(s) for s in set(found)) / len(found))
    rng = np.random.default_rng(0)
    ids = np.array(sorted(scene_of))
    chance = np.mean([max(np.unique([scene_of[c] for c in rng.choice(ids, 3, replace=False)],
                                    return_counts=True)[1]) / 3 for _ in range(2000)])
    assert np.mean(purity) > chance + 0.2, (purity, chance)

    # The next night starts from this dictionary; a rerun of it starts from the same one.
    second = make_night(night.paths.root, night1.cfg, DAY2)
    clips = add_day(second.paths, second.Session, DAY2, scenes[:2], silent_video=False)
    ids2 = sorted(clips)
    write_embeddings(second.engine, second.paths, space="shared", model_version="align@2026-01-15",
                     date="2026-01-15", rows=[EmbeddingRow(c, "vision") for c in ids2],
                     vectors=vectors_like(len(ids2), night1.cfg.models.align.dim))
    second.results["align"] = {"model_version": "align@2026-01-15"}
    for _ in range(2):
        again = sae_stage.run(second)
        assert again["resumed_from"] == "2026-01-14" and again["rows"] == len(ids2)
    assert len(stored(second, "sae", "sae@2026-01-15", "2026-01-15")[0]) == again["written"]



def vectors_like(n: int, dim: int) -> np.ndarray:
    return np.random.default_rng(1).normal(size=(n, dim)).astype(np.float32)


@pytest.mark.parametrize("kind", ["sound only", "silent video only"])
def test_a_day_with_one_sense_completes_every_stage(root, tiny_cfg, kind):
    """No vision (or no audio) means no alignment, so no memory traces tonight; the stages say
    so in the summary instead of failing, and the night ends done."""
    import json

    from pipeline.runner import run_night

    raw = root / "data" / "raw" / DAY1.isoformat()
    if kind == "sound only":
        make_media(raw / "voice.wav", seconds=8, video=None, audio="sine=frequency=440:sample_rate=16000")
    else:
        make_media(raw / "silent.mp4", seconds=8, audio=None)
    outcome = run_night(DAY1, tiny_cfg, Paths.at(root))
    assert set(outcome.states.values()) == {"done"}, outcome.errors
    summary = json.loads((root / "reports" / DAY1.isoformat() / "summary.json").read_text())
    assert summary["sae"] == {"input_space": "shared", "input_version": "align@2026-01-14", "rows": 0,
                              "trained": False, "note": "fewer than two shared vectors tonight"}
    assert summary["reconstruct"]["trained"] is (kind == "silent video only")


def test_replay_takes_a_clips_keepsake_where_its_segment_is_gone(root, tiny_cfg, scenes):
    from memory.keepsakes import Keepsake, save_keepsakes, snippet_name, write_keep_file
    from stages.audio import pick_replay

    night = make_night(root, tiny_cfg, DAY2)
    clips = add_day(night.paths, night.Session, DAY1, scenes[:2], silent_video=False)
    with night.Session() as session:
        segments = {s.clip_id: night.paths.root / s.path for s in session.query(AudioSegment)}
    first, second, *_ = sorted(clips)
    snippet = write_keep_file(night.paths, DAY1.isoformat(), snippet_name(first, "wav"), segments[first].read_bytes())
    save_keepsakes(night.engine, night.paths, DAY1.isoformat(), [Keepsake(first, DAY1.isoformat(), None, snippet)])
    segments[first].unlink()   # kept a snippet: it stands in
    segments[second].unlink()  # kept nothing: it is missing
    with night.Session() as session:
        refs, counts = pick_replay(session, DAY2.isoformat(), night.paths, 100, seed=0)
    assert counts == {"pool": len(clips), "from_keepsakes": 1, "missing": 1}
    assert {r.clip_id: r.path for r in refs}[first] == snippet and second not in {r.clip_id for r in refs}
