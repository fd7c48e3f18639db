"""Ingest on real media made by FFmpeg's lavfi sources: exact counts, reasons, reruns."""
from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess

import pytest
import soundfile as sf
from conftest import make_media, run_cli
from PIL import Image
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.config import CONFIG_DIR, load_config
from core.paths import Paths
from ingest.binaries import ffmpeg_path
from ingest.clips import clip_windows
from ingest.command import OutputDirs, audio_packet_samples, build_command
from ingest.plan import Found, Known, plan_day
from ingest.probe import MediaInfo, describe_probe_failure
from ingest.walltime import time_from_name
from memory.db import make_sessionmaker, open_database
from memory.schema import AudioSegment, Clip, Frame, Source
from memory.sources import media_folders
from pipeline.runner import run_night

DATE = dt.date(2026, 1, 15)
GOOD = {
    # file: (clips, frames, audio segments)  -- tiny config: 3 s clips, 1 fps
    "VID_20260115_081502.mp4": (4, 10, 4),      # 10 s video + audio
    "日記 12-30-05.mkv": (2, 5, 0),              # 4.4 s video, no audio
    "voice memo.m4a": (3, 0, 3),                 # 7 s audio only
    "rotated.mp4": (2, 4, 2),                    # 4 s, rotation 90
    "short.mp4": (1, 1, 1),                      # 0.5 s
}
BAD = {
    "truncated.mp4": "truncated or damaged",
    "empty.mp4": "empty file (0 bytes)",
    "random.mov": "not a media file (ffprobe: Invalid data found when processing input)",
    "notes.mp4": "not a media file",
}


def make_day(raw):
    """A day of recordings: every kind of good file and every kind of bad one."""
    raw.mkdir(parents=True, exist_ok=True)
    make_media(raw / "VID_20260115_081502.mp4", seconds=10, extra=["-g", "20"])
    make_media(raw / "日記 12-30-05.mkv", seconds=4.4, audio=None)
    make_media(raw / "voice memo.m4a", seconds=7, video=None,
               extra=["-metadata", "creation_time=2026-01-15T06:30:00Z"])
    plain = make_media(raw.parent / "plain.mp4", seconds=4)
    subprocess.run([ffmpeg_path(), "-v", "error", "-y", "-display_rotation", "90", "-i", str(plain),
                    "-c", "copy", str(raw / "rotated.mp4")], check=True)
    make_media(raw / "short.mp4", seconds=0.5)
    whole = make_media(raw.parent / "whole.mkv", seconds=10).read_bytes()
    (raw / "cut off.mkv").write_bytes(whole[: len(whole) // 2])
    data = plain.read_bytes()
    (raw / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (raw / "empty.mp4").write_bytes(b"")
    (raw / "random.mov").write_bytes(bytes(range(256)) * 40)
    (raw / "notes.mp4").write_text("this is a text file with a video name\n")
    (raw / "README.txt").write_text("not a recording\n")
    plain.unlink()
    (raw.parent / "whole.mkv").unlink()
    return raw


def ingest(root, cfg=None, force=True):
    paths = Paths.at(root)
    outcome = run_night(DATE, cfg or load_config(CONFIG_DIR / "tiny.yaml"), paths,
                        stages=None, only=["ingest"], force=force, device="cpu")
    assert outcome.states["ingest"] == "done", outcome.errors
    return json.loads((paths.report(DATE) / "summary.json").read_text())["ingest"]


def db_counts(root):
    engine = open_database(Paths.at(root).database)
    with make_sessionmaker(engine)() as s:
        out = {t.__tablename__: s.scalar(select(func.count()).select_from(t))
               for t in (Source, Clip, Frame, AudioSegment)}
    engine.dispose()
    return out


def files_under(root):
    return sorted(p.relative_to(root).as_posix() for p in (root / "data").rglob("*")
                  if p.is_file() and "/raw/" not in p.as_posix())


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """The day's raw files, made once for the module."""
    return make_day(tmp_path_factory.mktemp("media") / "raw")


@pytest.fixture(scope="module")
def ingested(tmp_path_factory, media):
    """A root whose day was ingested once, and that run's result."""
    root = tmp_path_factory.mktemp("ingested")
    shutil.copytree(media, Paths.at(root).raw(DATE))
    return root, ingest(root)


@pytest.fixture
def fresh(tmp_path, media):
    """A fresh root with a copy of the day (for tests that change it)."""
    root = tmp_path / "root"
    shutil.copytree(media, Paths.at(root).raw(DATE))
    return root


def _processed(result):
    return {p["file"]: p for p in result["processed"]}


# -- exact counts ----------------------------------------------------------------------

@pytest.mark.parametrize("name", list(GOOD))
def test_counts_per_file(ingested, name):
    _, result = ingested
    entry = _processed(result)[name]
    assert (entry["clips"], entry["frames"], entry["audio_segments"]) == GOOD[name]


def test_day_totals_match_the_database(ingested):
    root, result = ingested
    cut = _processed(result)["cut off.mkv"]
    assert result["clips"] == sum(c for c, _, _ in GOOD.values()) + cut["clips"]
    assert result["frames"] == sum(f for _, f, _ in GOOD.values()) + cut["frames"]
    counts = db_counts(root)
    assert counts["clips"] == result["clips"] and counts["frames"] == result["frames"]
    assert counts["audio_segments"] == result["audio_segments"] == \
        sum(a for _, _, a in GOOD.values()) + cut["audio_segments"]
    assert counts["sources"] == len(GOOD) + 1 + len(BAD)


def test_video_without_audio_has_no_audio(ingested):
    root, result = ingested
    entry = _processed(result)["日記 12-30-05.mkv"]
    assert entry["has_audio"] is False and entry["audio_segments"] == 0


def test_audio_only_has_no_frames_but_exact_segments(ingested):
    root, result = ingested
    assert _processed(result)["voice memo.m4a"]["frames"] == 0
    engine = open_database(Paths.at(root).database)
    with make_sessionmaker(engine)() as s:
        source = s.scalar(select(Source).where(Source.path.like("%voice memo.m4a")))
        segments = [c.audio for c in sorted(source.clips, key=lambda c: c.index)]
        infos = [sf.info(root / seg.path) for seg in segments]
    engine.dispose()
    assert [i.samplerate for i in infos] == [16000] * 3 and [i.channels for i in infos] == [1] * 3
    # Full clips are cut exactly at the clip boundary; the tail holds the last second.
    assert [i.frames for i in infos[:2]] == [48000, 48000]
    assert 15900 <= infos[2].frames <= 16400


def test_frames_are_resized_and_rotated(ingested):
    root, _ = ingested
    engine = open_database(Paths.at(root).database)
    with make_sessionmaker(engine)() as s:
        rot = s.scalar(select(Source).where(Source.path.like("%rotated.mp4")))
        plain = s.scalar(select(Source).where(Source.path.like("%VID_20260115_081502.mp4")))
        rot_frame = rot.clips[0].frames[0].path
        plain_frame = plain.clips[0].frames[0].path
        assert (rot.width, rot.height) == (120, 160)
    engine.dispose()
    assert Image.open(root / plain_frame).size == (128, 96)   # landscape, short side 96
    assert Image.open(root / rot_frame).size == (96, 128)     # portrait after rotation


def test_frames_belong_to_the_clip_containing_their_time(ingested):
    root, _ = ingested
    engine = open_database(Paths.at(root).database)
    with make_sessionmaker(engine)() as s:
        source = s.scalar(select(Source).where(Source.path.like("%VID_20260115_081502.mp4")))
        times = {c.index: sorted(f.t_s for f in c.frames) for c in source.clips}
        windows = {c.index: (c.start_s, c.end_s) for c in source.clips}
    engine.dispose()
    assert times == {0: [0, 1, 2], 1: [3, 4, 5], 2: [6, 7, 8], 3: [9]}
    assert windows[3] == (9.0, 10.0)


def test_wall_clock_sources(ingested):
    _, result = ingested
    p = _processed(result)
    assert (p["VID_20260115_081502.mp4"]["wall_start"], p["VID_20260115_081502.mp4"]["wall_start_from"]) == \
        ("2026-01-15T08:15:02", "filename")
    assert p["日記 12-30-05.mkv"]["wall_start"] == "2026-01-15T12:30:05"
    assert p["voice memo.m4a"]["wall_start_from"] == "creation_time"
    assert p["short.mp4"]["wall_start_from"] == "mtime"


@pytest.mark.parametrize("name", list(BAD))
def test_bad_files_are_skipped_with_reasons(ingested, name):
    _, result = ingested
    reasons = {f["file"]: f["reason"] for f in result["failed"]}
    assert reasons[name].startswith(BAD[name])
    assert len(result["failed"]) == len(BAD)


def test_truncated_mkv_keeps_what_decodes(ingested):
    _, result = ingested
    entry = _processed(result)["cut off.mkv"]
    assert 1 <= entry["clips"] < 4
    assert entry["note"].startswith(f"damaged: only {entry['clips']} of 4 clips decoded")
    assert entry["duration_s"] < 10


def test_non_media_extension_is_ignored(ingested):
    _, result = ingested
    assert [i["file"] for i in result["ignored"]] == ["README.txt"]


# -- reruns, changes, removals, interruptions ------------------------------------------

def test_rerun_adds_nothing(ingested):
    root, first = ingested
    before, on_disk = db_counts(root), files_under(root)
    again = ingest(root)
    assert again["added"] == {"sources": 0, "clips": 0, "frames": 0, "audio_segments": 0}
    assert {p["action"] for p in again["processed"]} == {"unchanged"}
    assert db_counts(root) == before and files_under(root) == on_disk
    assert again["clips"] == first["clips"]


def test_changed_file_replaces_its_clips(fresh):
    ingest(fresh)
    before = db_counts(fresh)["clips"]
    frame_dirs = len(list(Paths.at(fresh).frames(DATE).iterdir()))
    raw = Paths.at(fresh).raw(DATE)
    make_media(raw / "short.mp4", seconds=7)  # same name, new content
    result = ingest(fresh)
    assert _processed(result)["short.mp4"]["clips"] == 3
    assert result["added"]["sources"] == 1
    assert db_counts(fresh)["clips"] == before - 1 + 3
    # the new version has its own folder and the old version's is gone
    assert len(list(Paths.at(fresh).frames(DATE).iterdir())) == frame_dirs


def test_removed_file_is_reported_and_keeps_its_clips(fresh):
    ingest(fresh)
    before = db_counts(fresh)["clips"]
    (Paths.at(fresh).raw(DATE) / "short.mp4").unlink()
    result = ingest(fresh)
    assert [r["file"] for r in result["removed"]] == ["short.mp4"]
    assert db_counts(fresh)["clips"] == before


def test_renamed_file_is_not_decoded_again(fresh):
    ingest(fresh)
    raw = Paths.at(fresh).raw(DATE)
    (raw / "short.mp4").rename(raw / "short renamed.mp4")
    result = ingest(fresh)
    assert result["added"]["sources"] == 0 and result["removed"] == []
    assert _processed(result)["short renamed.mp4"]["clips"] == 1


def test_killed_run_is_redone_cleanly(fresh):
    """Folders renamed into place but no rows (killed before the commit) are replaced whole."""
    ingest(fresh)
    paths = Paths.at(fresh)
    on_disk = files_under(fresh)
    paths.database.unlink()
    folder = next(paths.frames(DATE).iterdir())
    (folder / "99999_0.jpg").write_bytes(b"stale")
    (paths.frames(DATE) / ".abc.tmp-1-deadbeef").mkdir()  # a killed run's temp folder
    result = ingest(fresh)
    assert result["added"]["sources"] == len(GOOD) + 1
    assert files_under(fresh) == on_disk


def test_changed_settings_reextract(fresh, monkeypatch):
    ingest(fresh)
    paths = Paths.at(fresh)
    before = {p for p in files_under(fresh) if p.startswith("data/frames/")}
    # The ordering rule: while the new rows are committed, every file the replaced rows name
    # is still there (the new split went to a folder of its own).
    import stages.ingest as stage

    real_save, checked = stage.save_source, []

    def save_checking(session, source, clips, *, replaces=()):
        for old in replaces:
            for folder in media_folders(session, [old.id]):
                assert (paths.root / folder).is_dir(), folder
            named = session.scalars(select(Frame.path).join(Clip).where(Clip.source_id == old.id)).all()
            assert all((paths.root / p).is_file() for p in named), old.path
            checked.append(old.path)
        return real_save(session, source, clips, replaces=replaces)

    monkeypatch.setattr(stage, "save_source", save_checking)
    cfg = load_config(CONFIG_DIR / "tiny.yaml", ["ingest.clip_seconds=5"])
    result = ingest(fresh, cfg)
    assert _processed(result)["VID_20260115_081502.mp4"]["clips"] == 2
    assert result["added"]["sources"] == len(GOOD) + 1
    assert len(checked) >= len(GOOD)
    # The old split's folders went after the commit; nothing else is left of it.
    after = {p for p in files_under(fresh) if p.startswith("data/frames/")}
    assert after and not after & before
    engine = open_database(paths.database)
    with Session(engine) as session:
        named = set(session.scalars(select(Frame.path)))
    engine.dispose()
    assert named == after


def test_cli_night_with_bad_files_exits_0_and_reports_them(tmp_path):
    root = tmp_path / "root"
    raw = Paths.at(root).raw(DATE)
    make_media(raw / "VID_20260115_090000.mp4", seconds=4)
    (raw / "broken.mp4").write_text("not a video")
    result = run_cli("--date", DATE.isoformat(), "--root", str(root),
                     "--config", str(CONFIG_DIR / "tiny.yaml"))
    assert result.returncode == 0, result.stderr
    report = Paths.at(root).report(DATE)
    summary = json.loads((report / "summary.json").read_text())
    assert summary["ingest"]["failed"] == [
        {"file": "broken.mp4", "reason": "not a media file (ffprobe: Invalid data found when processing input)"}]
    page = (report / "index.html").read_text()
    assert "broken.mp4" in page and "VID_20260115_090000.mp4" in page and "Ingest" in page
    assert "broken.mp4" in (report / "sleep.log").read_text()


# -- the pure parts --------------------------------------------------------------------

@pytest.mark.parametrize("duration,expected", [(10, 4), (9.0, 3), (9.1, 3), (9.3, 4), (4.4, 2),
                                               (0.5, 1), (0.1, 1), (0, 0), (3, 1)])
def test_clip_count_rule(duration, expected):
    assert len(clip_windows(duration, 3.0)) == expected


@pytest.mark.parametrize("name,expected", [
    ("VID_20191220_170832.mp4", dt.datetime(2019, 12, 20, 17, 8, 32)),
    ("PXL_20231220_170832123.mp4", dt.datetime(2023, 12, 20, 17, 8, 32)),
    ("1915_call with mum.mp4", dt.datetime(2026, 1, 15, 19, 15)),
    ("walk 07-45-10.mov", dt.datetime(2026, 1, 15, 7, 45, 10)),
    ("2599_nonsense.mp4", None),
    ("holiday.mp4", None),
])
def test_time_from_name(name, expected):
    assert time_from_name(name, DATE) == expected


def test_one_ffmpeg_command_writes_every_output(tmp_path):
    info = MediaInfo("mov,mp4", 10.0, 0, 1, "h264", "aac", 160, 120, 0, None)
    cfg = load_config(None).ingest
    cmd = build_command(tmp_path / "a b.mp4", info, cfg,
                        OutputDirs(tmp_path / "f", tmp_path / "a", tmp_path / "c"), "ffmpeg")
    assert cmd.count("-i") == 1
    assert "image2" in cmd and cmd.count("segment") == 2
    assert any("fps=" in a and "scale=" in a for a in cmd)


def test_audio_packets_tile_a_clip():
    assert 48000 % audio_packet_samples(3.0, 16000) == 0
    assert audio_packet_samples(2.5, 16000) * 10 <= 40000


def test_truncated_mp4_is_told_apart_from_text(tmp_path):
    mp4 = tmp_path / "cut.mp4"
    mp4.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 100)
    text = tmp_path / "t.mp4"
    text.write_text("hello")
    stderr = "[mov] moov atom not found\nx.mp4: Invalid data found when processing input\n"
    assert describe_probe_failure(mp4, stderr).startswith("truncated or damaged")
    assert describe_probe_failure(text, stderr) == \
        "not a media file (ffprobe: Invalid data found when processing input)"


def test_plan_changed_duplicate_removed():
    known = [Known(1, "a.mp4", "h1", "ok", "s"), Known(2, "gone.mp4", "h2", "ok", "s"),
             Known(3, "bad.mp4", "h3", "failed", None)]
    found = [Found("a.mp4", "h9"), Found("copy of a.mp4", "h9")]
    plan = plan_day(found, known, "s")
    assert [(f.path, r) for f, r in plan.extract] == [("a.mp4", [1])]
    assert plan.duplicates == [("copy of a.mp4", "a.mp4")]
    assert plan.removed == [2] and plan.dropped == [3]


def test_clip_files_are_stream_copies_covering_each_clip(tmp_path):
    root = tmp_path / "root"
    make_media(Paths.at(root).raw(DATE) / "VID_20260115_100000.mp4", seconds=10, extra=["-g", "20"])
    cfg = load_config(CONFIG_DIR / "tiny.yaml", ["ingest.write_clips=true"])
    ingest(root, cfg)
    engine = open_database(Paths.at(root).database)
    with make_sessionmaker(engine)() as s:
        clips = s.scalars(select(Clip).order_by(Clip.index)).all()
        video_paths = [c.video_path for c in clips]
    engine.dispose()
    assert len(clips) == 4 and all(video_paths)
    on_disk = sorted(p.relative_to(root).as_posix() for p in Paths.at(root).clips(DATE).rglob("*.mp4"))
    assert on_disk == sorted(set(video_paths))  # every file is some clip's, none is left over


def test_clips_are_numbered_in_the_day_file_order_whichever_worker_finishes_first(tmp_path):
    """The first file is the long one, so its worker finishes last; its clips still come
    first: clip ids, and the order of the night's training batches, repeat run after run."""
    raw = Paths.at(tmp_path).raw(DATE)
    make_media(raw / "a_long.mp4", seconds=15)
    make_media(raw / "b_short.mp4", seconds=3, video="smptebars=size=160x120:rate=10")
    ingest(tmp_path)
    engine = open_database(Paths.at(tmp_path).database)
    with make_sessionmaker(engine)() as s:
        order = [path for path, in s.execute(select(Source.path).join(Clip, Clip.source_id == Source.id)
                                             .order_by(Clip.id))]
    engine.dispose()
    assert order == sorted(order) and order[0].endswith("a_long.mp4") and order[-1].endswith("b_short.mp4")
