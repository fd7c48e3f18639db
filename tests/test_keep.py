"""Stage ``keep`` on real media made by FFmpeg: keyframes and snippets that outlive retention;
forget and doctor; checkpoint retention."""
from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import stat

import pytest
import soundfile as sf
from conftest import make_media
from memfill import add_day, embed_day
from PIL import Image
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.config import CONFIG_DIR, RetentionConfig, load_config
from core.paths import Paths
from memory import day_keepsakes, keepsake_days
from memory.checkpoints import CheckpointSum, record_checkpoints
from memory.db import open_database
from memory.doctor import doctor
from memory.forget import forget_day
from memory.keepsakes import KeepsakeRow
from memory.retention import apply_retention
from memory.schema import AudioSegment, Clip, Frame
from pipeline.runner import run_night
from report.sections.keep import render
from stages import STAGES, stage_names

DATE = dt.date(2026, 1, 15)
DAY = DATE.isoformat()
# tiny config: 3 s clips at 1 fps; frames 96 px on the short side, keyframes 64.
CLIPS_WITH_VIDEO, CLIPS_WITH_SOUND, CLIPS = 3 + 2, 3 + 2, 3 + 2 + 2


def tiny(*overrides: str):
    return load_config(CONFIG_DIR / "tiny.yaml", list(overrides))


def night(root, *stages: str, cfg=None, force: bool = False) -> dict:
    paths = Paths.at(root)
    outcome = run_night(DATE, cfg or tiny(), paths, only=list(stages), force=force, device="cpu")
    assert all(outcome.states[s] == "done" for s in stages), outcome.errors
    return json.loads((paths.report(DATE) / "summary.json").read_text())


@pytest.fixture(scope="module")
def kept_root(tmp_path_factory):
    """A day of three recordings, ingested and kept once for the module (copy it to change it)."""
    root = tmp_path_factory.mktemp("keep") / "root"
    raw = Paths.at(root).raw(DATE)
    make_media(raw / "cam.mp4", seconds=7)                  # 3 clips, video and sound
    make_media(raw / "silent.mkv", seconds=4.4, audio=None)  # 2 clips, video only
    make_media(raw / "memo.m4a", seconds=4, video=None)      # 2 clips, sound only
    summary = night(root, "ingest", "keep")
    return root, summary


@pytest.fixture
def day(kept_root, tmp_path):
    """A private copy of the kept day."""
    root = tmp_path / "root"
    shutil.copytree(kept_root[0], root)
    return root


def keepsakes(root) -> list:
    engine = open_database(Paths.at(root).database)
    try:
        with Session(engine) as session:
            return day_keepsakes(session, DAY)
    finally:
        engine.dispose()


def kept_files(root) -> dict[str, bytes]:
    folder = Paths.at(root).keep(DATE)
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())} if folder.is_dir() else {}


def media_rows(root) -> tuple[set[int], dict[int, str]]:
    """Clips with frames, and each clip's audio segment path."""
    engine = open_database(Paths.at(root).database)
    try:
        with Session(engine) as s:
            with_frames = set(s.scalars(select(Frame.clip_id)))
            segments = dict(s.execute(select(AudioSegment.clip_id, AudioSegment.path)).all())
    finally:
        engine.dispose()
    return with_frames, segments


def test_keep_runs_right_after_ingest():
    names = stage_names()
    assert names[:2] == ["ingest", "keep"]
    keep = STAGES[1]
    assert keep.needs == ("ingest",) and keep.config_sections == ("memory.keep",) and keep.model is None


def test_one_keyframe_per_clip_with_video(kept_root):
    root, summary = kept_root
    with_frames, _ = media_rows(root)
    kept = {k.clip_id: k for k in keepsakes(root)}
    assert len(with_frames) == CLIPS_WITH_VIDEO
    assert {c for c, k in kept.items() if k.keyframe} == with_frames
    for clip_id in with_frames:
        rel = kept[clip_id].keyframe
        assert rel == f"memory/keep/{DAY}/{clip_id}.jpg"
        with Image.open(root / rel) as image:
            image.load()
            assert image.format == "JPEG" and image.mode == "RGB"
            assert min(image.size) == 64 and max(image.size) == 85  # 160x120 -> 85x64
    assert summary["keep"]["keyframes"] == CLIPS_WITH_VIDEO


def test_one_snippet_per_clip_with_sound(kept_root):
    root, summary = kept_root
    _, segments = media_rows(root)
    kept = {k.clip_id: k for k in keepsakes(root)}
    assert len(segments) == CLIPS_WITH_SOUND
    assert {c for c, k in kept.items() if k.snippet} == set(segments)
    for clip_id, segment in segments.items():
        snippet = kept[clip_id].snippet
        assert snippet == f"memory/keep/{DAY}/{clip_id}.flac"
        wave, rate = sf.read(root / snippet)
        source, _ = sf.read(root / segment)
        assert rate == 16000 and wave.ndim == 1
        assert abs(len(wave) - len(source)) <= 1
        assert abs(wave - source[:len(wave)]).max() < 1e-3  # lossless
    assert summary["keep"]["snippets"] == CLIPS_WITH_SOUND


def test_result_counts_and_metrics(kept_root):
    root, summary = kept_root
    result, metrics = summary["keep"], summary["metrics"]["keep"]
    on_disk = sum(len(b) for b in kept_files(root).values())
    assert result["clips"] == result["kept"] == CLIPS and result["skipped"] == []
    assert result["written"] == {"keyframes": CLIPS_WITH_VIDEO, "snippets": CLIPS_WITH_SOUND}
    assert result["bytes_written"] == result["bytes_stored"] == on_disk
    assert metrics["bytes_per_clip"] == round(on_disk / CLIPS, 1) and metrics["kept"] == CLIPS


def test_kept_files_are_private(kept_root):
    root, _ = kept_root
    paths = Paths.at(root)
    for folder in (paths.memory / "keep", paths.keep(DATE)):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for file in paths.keep(DATE).iterdir():
        assert stat.S_IMODE(file.stat().st_mode) == 0o600


def test_rerun_adds_nothing(day):
    before_rows, before_files = keepsakes(day), kept_files(day)
    again = night(day, "keep", force=True)["keep"]
    assert keepsakes(day) == before_rows and kept_files(day) == before_files
    assert again["kept"] == CLIPS and again["removed"] == []


def test_changed_keep_config_rewrites(day):
    cfg = tiny("memory.keep.keyframe_size=32", "memory.keep.snippet_format=wav")
    night(day, "keep", cfg=cfg)  # not forced: the changed config alone reruns the stage
    kept = keepsakes(day)
    assert sorted(n.rsplit(".", 1)[1] for n in kept_files(day)) == \
        ["jpg"] * CLIPS_WITH_VIDEO + ["wav"] * CLIPS_WITH_SOUND
    for k in kept:
        if k.keyframe:
            assert min(Image.open(day / k.keyframe).size) == 32
        if k.snippet:
            assert k.snippet.endswith(".wav") and sf.info(day / k.snippet).format == "WAV"


def test_keyframe_is_never_enlarged(day):
    night(day, "keep", cfg=tiny("memory.keep.keyframe_size=512"))
    sizes = {Image.open(day / k.keyframe).size for k in keepsakes(day) if k.keyframe}
    assert sizes == {(128, 96)}  # the frames' own size


def test_unreadable_frame_is_listed_and_the_day_goes_on(day):
    with_frames, _ = media_rows(day)
    broken = min(with_frames)
    kept = {k.clip_id: k for k in keepsakes(day)}
    old_keyframe = (day / kept[broken].keyframe).read_bytes()
    engine = open_database(Paths.at(day).database)
    with Session(engine) as s:
        for path in s.scalars(select(Frame.path).where(Frame.clip_id == broken)):
            (day / path).write_bytes(b"not a jpeg")
    engine.dispose()
    result = night(day, "keep", force=True)["keep"]
    assert [(s["clip_id"], s["kind"]) for s in result["skipped"]] == [(broken, "keyframe")]
    assert result["skipped"][0]["reason"].startswith("cannot read the frame")
    assert result["written"]["keyframes"] == CLIPS_WITH_VIDEO - 1
    # What the clip kept before stays.
    assert (day / kept[broken].keyframe).read_bytes() == old_keyframe


def test_keepsakes_outlive_retention(day):
    paths = Paths.at(day)
    before, files = keepsakes(day), kept_files(day)
    summary = night(day, "retention", cfg=tiny("memory.retention.derived_days=0"))
    assert summary["retention"]["derived_removed"] == [DAY]
    assert not paths.frames(DATE).exists() and not paths.audio(DATE).exists()
    assert keepsakes(day) == before and kept_files(day) == files
    engine = open_database(paths.database)
    with Session(engine) as s:
        assert keepsake_days(s) == [DAY]
    engine.dispose()
    assert doctor(paths)["problems"] == []
    # Keeping the day again without its footage keeps what it kept.
    again = night(day, "keep", force=True)["keep"]
    assert keepsakes(day) == before and kept_files(day) == files
    assert again["written"] == {"keyframes": 0, "snippets": 0} and again["kept"] == CLIPS


def test_replaced_recording_takes_its_kept_files_along(day):
    paths = Paths.at(day)
    old = {k.clip_id for k in keepsakes(day)}
    make_media(paths.raw(DATE) / "memo.m4a", seconds=7, video=None,
               audio="sine=frequency=880:sample_rate=44100")
    night(day, "ingest", "keep", force=True)
    engine = open_database(paths.database)
    with Session(engine) as s:
        clips = set(s.scalars(select(Clip.id).where(Clip.date == DAY)))
    engine.dispose()
    kept = keepsakes(day)
    assert {k.clip_id for k in kept} == clips != old
    named = {os.path.basename(p) for k in kept for p in (k.keyframe, k.snippet) if p}
    assert set(kept_files(day)) == named
    assert doctor(paths)["problems"] == []


def test_forget_removes_keepsakes(day):
    paths = Paths.at(day)
    removed = forget_day(paths, DATE)
    assert removed["database"]["keepsakes"] == CLIPS
    assert f"memory/keep/{DAY}" in removed["files"]
    assert not paths.keep(DATE).exists() and keepsakes(day) == []
    engine = open_database(paths.database)
    with Session(engine) as s:
        assert s.scalar(select(func.count()).select_from(KeepsakeRow)) == 0
    engine.dispose()


def test_doctor_names_a_deleted_keyframe(day):
    paths = Paths.at(day)
    gone = next(k for k in keepsakes(day) if k.keyframe and k.snippet)
    (day / gone.keyframe).unlink()
    assert doctor(paths)["problems"] == [f"keepsake {gone.keyframe}: file missing"]
    assert doctor(paths, repair=True)["ok"] and doctor(paths)["problems"] == []
    now = {k.clip_id: k for k in keepsakes(day)}[gone.clip_id]
    assert now.keyframe is None and now.snippet == gone.snippet


def test_doctor_deletes_a_kept_file_nobody_knows(day):
    paths = Paths.at(day)
    stray = paths.keep(DATE) / "999999.jpg"
    stray.write_bytes(b"jpeg")
    assert doctor(paths)["problems"] == [f"memory/keep/{DAY}/999999.jpg: kept file no database row knows"]
    doctor(paths, repair=True)
    assert not stray.exists() and doctor(paths)["problems"] == []


def test_report_section_shows_the_keep(kept_root):
    root, summary = kept_root

    class Ctx:
        cfg = tiny()
        paths = Paths.at(root)
        date = DATE

    page = render(summary, Ctx)
    assert f"{CLIPS} of {CLIPS}" in page and "Every frame and segment could be read" in page
    assert render({"date": DAY}, Ctx) is None
    page = (Paths.at(root).report(DATE) / "index.html").read_text()
    assert "Keyframes and sounds kept for re-embedding" in page and "clips kept" in page


# -- checkpoint retention ---------------------------------------------------------------------

@pytest.fixture
def checkpoints(root):
    """Nights 01-01..01-05 of jepa (the vision space searches jepa@01-02) and 01-01..01-02 of dream."""
    paths = Paths.at(root)
    engine = open_database(paths.database)
    ids = add_day(engine, paths, "2026-01-02", 4)
    embed_day(engine, paths, "2026-01-02", ids, version="jepa@2026-01-02")
    for model, days in (("jepa", range(1, 6)), ("dream", range(1, 3))):
        for d in days:
            (paths.checkpoints / model).mkdir(parents=True, exist_ok=True)
            (paths.checkpoints / model / f"2026-01-0{d}.pt").write_bytes(b"weights")
        (paths.checkpoints / model / "latest").write_text(f"2026-01-0{d}\n")
    yield engine, paths
    engine.dispose()


def _left(paths, model):
    return sorted(p.stem for p in (paths.checkpoints / model).glob("*.pt"))


def test_checkpoint_retention_keeps_the_newest_and_the_searched_version(checkpoints):
    engine, paths = checkpoints
    with Session(engine) as session, session.begin():
        record_checkpoints(session, paths)
    result = apply_retention(engine, paths, RetentionConfig(checkpoint_days=1), dt.date(2026, 1, 5))
    assert _left(paths, "jepa") == ["2026-01-02", "2026-01-05"]
    assert _left(paths, "dream") == ["2026-01-02"]
    gone = (("dream", 1), ("jepa", 1), ("jepa", 3), ("jepa", 4))
    assert result["checkpoints_removed"] == [f"checkpoints/{m}/2026-01-0{d}.pt" for m, d in gone]
    assert result["metrics"]["checkpoints_removed"] == 4
    # Their checksum rows went with them (else doctor finds recorded checkpoints missing).
    with Session(engine) as session:
        recorded = sorted(session.scalars(select(CheckpointSum.path)))
    assert recorded == ["checkpoints/dream/2026-01-02.pt", "checkpoints/jepa/2026-01-02.pt",
                        "checkpoints/jepa/2026-01-05.pt"]
    assert doctor(paths)["problems"] == []


def test_checkpoint_retention_keeps_versions_named_in_use(checkpoints):
    engine, paths = checkpoints
    apply_retention(engine, paths, RetentionConfig(checkpoint_days=2), dt.date(2026, 1, 5),
                    keep_versions=["jepa@2026-01-03"])
    assert _left(paths, "jepa") == ["2026-01-02", "2026-01-03", "2026-01-04", "2026-01-05"]


def test_checkpoints_are_kept_without_checkpoint_days(checkpoints):
    engine, paths = checkpoints
    result = apply_retention(engine, paths, RetentionConfig(), dt.date(2026, 1, 5))
    assert len(_left(paths, "jepa")) == 5 and result["checkpoints_removed"] == []
