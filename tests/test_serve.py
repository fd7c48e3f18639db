"""``sleep.py serve``: the token gate, the media policy, search through the page's API, and a
real browser (headless Chromium) searching by an uploaded frame with nothing loaded from the network."""
from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from conftest import REPO, make_media

from core.config import CONFIG_DIR, load_config
from core.paths import Paths
from memory.media import ClipMedia
from web import make_app
from web.auth import cookie_name
from web.media import player, served_file
from web.server import is_loopback, running

DATE = dt.date(2026, 1, 15)
DAY = DATE.isoformat()
# Four recordings of one 3 s clip each, each a scene unlike the others: a frame of one must
# find its own clip first even after a few training steps.
SCENES = {"VID_20260115_081500.mp4": "testsrc2=size=160x120:rate=10",
          "VID_20260115_091500.mp4": "mandelbrot=size=160x120:rate=10",
          "VID_20260115_101500.mp4": "smptebars=size=160x120:rate=10",
          "VID_20260115_111500.mp4": "cellauto=size=160x120:rate=10"}
TOKEN = "test-token-" + "x" * 21


def tiny_cfg():
    return load_config(CONFIG_DIR / "tiny.yaml", ["models.jepa.steps=8", "models.jepa.warmup_steps=2"])


@pytest.fixture(scope="module")
def night(tmp_path_factory) -> Path:
    """A root with one small night: ingest, keep and vision (enough to search by image)."""
    from pipeline.runner import run_night

    root = tmp_path_factory.mktemp("serve") / "root"
    raw = Paths.at(root).raw(DATE)
    for i, (name, video) in enumerate(SCENES.items()):
        make_media(raw / name, seconds=3, video=video, audio=None if i else "sine=frequency=440:sample_rate=16000")
    (raw / "journal.md").write_text("08:15 private words\n")
    outcome = run_night(DATE, tiny_cfg(), Paths.at(root), only=["ingest", "keep", "vision"], device="cpu")
    assert all(outcome.states[s] == "done" for s in ("ingest", "keep", "vision")), outcome.errors
    return root


@pytest.fixture(scope="module")
def server(night):
    with running(make_app(night, tiny_cfg(), token=TOKEN)) as url:
        yield url


def request(url: str, *, data: bytes | None = None, headers: dict | None = None) -> tuple[int, dict, bytes]:
    """``(status, headers, body)``; an HTTP error is an answer, not an exception; redirects not followed."""
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(urllib.request.Request(url, data=data, headers=headers or {}), timeout=120) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def multipart(fields: dict[str, str], file: tuple[str, bytes] | None = None) -> tuple[bytes, dict]:
    boundary = secrets.token_hex(12)
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    if file:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{file[0]}"\r\n'
                     f"Content-Type: application/octet-stream\r\n\r\n".encode() + file[1] + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def search(url: str, fields: dict[str, str], file: tuple[str, bytes] | None = None, token: str = TOKEN):
    body, headers = multipart(fields, file)
    status, _, answer = request(f"{url}/api/search", data=body,
                                headers={**headers, "Authorization": f"Bearer {token}"})
    return status, json.loads(answer) if status != 401 else answer.decode()


def frame_and_clip(root: Path, n: int = 5) -> tuple[Path, int]:
    """The ``n``-th frame of the night (by path) and the clip it belongs to, from the database."""
    frame = sorted((root / "data" / "frames").rglob("*.jpg"))[n]
    with sqlite3.connect(root / "memory" / "episodic.sqlite") as con:
        (clip_id,) = con.execute("SELECT clip_id FROM frames WHERE path=?",
                                 (frame.relative_to(root).as_posix(),)).fetchone()
    return frame, clip_id


# -- the token gate ----------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/", "/api/timeline", f"/api/day/{DAY}", "/static/app.js",
                                  f"/media/data/raw/{DAY}/VID_20260115_081500.mp4"])
def test_a_request_without_the_token_is_refused(server, path):
    status, headers, body = request(server + path)
    assert status == 401 and b"token" in body
    assert headers["x-content-type-options"] == "nosniff"


def test_a_search_without_the_token_is_refused(server, night):
    frame, _ = frame_and_clip(night)
    status, _ = search(server, {"kind": "image"}, (frame.name, frame.read_bytes()), token="wrong")
    assert status == 401


@pytest.mark.parametrize("how", ["query", "bearer", "cookie"])
def test_a_wrong_token_is_refused(server, how):
    wrong = TOKEN[:-1] + "y"
    headers = {"bearer": {"Authorization": f"Bearer {wrong}"},
               "cookie": {"Cookie": f"{cookie_name(TOKEN)}={wrong}"}}.get(how, {})
    status, _, _ = request(f"{server}/api/timeline" if how != "query" else f"{server}/?token={wrong}",
                           headers=headers)
    assert status == 401


def test_the_token_in_the_address_becomes_a_strict_cookie(server):
    status, headers, _ = request(f"{server}/?token={TOKEN}")
    assert status == 303 and headers["location"] == "/"
    cookie = headers["set-cookie"]
    assert cookie.startswith(f"{cookie_name(TOKEN)}={TOKEN};")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie
    status, headers, page = request(f"{server}/", headers={"Cookie": f"{cookie_name(TOKEN)}={TOKEN}"})
    assert status == 200 and b'<script src="/static/app.js"' in page
    assert "default-src 'self'" in headers["content-security-policy"]
    assert headers["referrer-policy"] == "no-referrer"


def test_the_page_names_no_other_origin():
    static = REPO / "web" / "static"
    for file in static.iterdir():
        text = file.read_text()
        assert "http:" not in text and "https:" not in text and "//" + "cdn" not in text, file.name


# -- media ---------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["../memory/episodic.sqlite", "memory/episodic.sqlite", "%2e%2e/memory/episodic.sqlite",
                                  "data/../memory/episodic.sqlite", "memory/keep/../episodic.sqlite",
                                  f"data/raw/{DAY}/journal.md", "checkpoints/jepa/latest", "/etc/passwd",
                                  "data/raw/%2Fetc%2Fpasswd"])
def test_media_refuses_anything_but_media_under_data_and_keep(server, path):
    status, _, body = request(f"{server}/media/{path}", headers={"Authorization": f"Bearer {TOKEN}"})
    assert status in (400, 403, 404) and b"SQLite" not in body and b"private words" not in body


def test_served_file_refuses_a_link_out_of_data(night, tmp_path):
    outside = tmp_path / "outside.jpg"
    outside.write_bytes(b"\xff\xd8")
    link = night / "data" / "frames" / "link.jpg"
    link.symlink_to(outside)
    try:
        assert served_file(Paths.at(night).root, "data/frames/link.jpg") is None
    finally:
        link.unlink()


def test_media_serves_frames_and_ranges_of_recordings(server, night):
    frame, _ = frame_and_clip(night)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    status, headers, body = request(f"{server}/media/{frame.relative_to(night).as_posix()}", headers=auth)
    assert status == 200 and headers["content-type"] == "image/jpeg" and body == frame.read_bytes()
    status, headers, body = request(f"{server}/media/data/raw/{DAY}/VID_20260115_081500.mp4",
                                    headers={**auth, "Range": "bytes=0-99"})
    assert status == 206 and headers["content-type"] == "video/mp4" and len(body) == 100


def test_player_prefers_the_clip_file_then_the_recording_then_the_sound(tmp_path):
    root = tmp_path
    media = ClipMedia(clip_id=1, date=DAY, start_s=3.0, end_s=6.0, source_path=f"data/raw/{DAY}/a.mp4",
                      has_video=True, video_path=f"data/clips/{DAY}/a_0001.mp4",
                      segment_path=f"data/audio/{DAY}/segments/1.wav", keyframe=f"memory/keep/{DAY}/1.jpg",
                      snippet=f"memory/keep/{DAY}/1.flac")
    for rel in (media.video_path, media.source_path, media.segment_path, media.snippet):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    assert player(root, media) == {"kind": "video", "url": f"/media/data/clips/{DAY}/a_0001.mp4"}
    (root / media.video_path).unlink()
    assert player(root, media) == {"kind": "video", "url": f"/media/data/raw/{DAY}/a.mp4#t=3.00,6.00"}
    (root / media.source_path).unlink()
    assert player(root, media) == {"kind": "audio", "url": f"/media/data/audio/{DAY}/segments/1.wav"}
    (root / media.segment_path).unlink()
    assert player(root, media) == {"kind": "audio", "url": f"/media/memory/keep/{DAY}/1.flac"}
    (root / media.snippet).unlink()
    assert player(root, media) is None


# -- search and timeline -------------------------------------------------------------------

def test_an_uploaded_frame_finds_its_own_clip_first(server, night, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the upload's private copy goes
    frame, clip_id = frame_and_clip(night)
    status, answer = search(server, {"kind": "image", "topk": "3"}, (frame.name, frame.read_bytes()))
    assert status == 200, answer
    first = answer["hits"][0]
    assert first["clip_id"] == clip_id and first["model_version"] == f"jepa@{DAY}"
    assert first["thumbnail"].startswith("/media/data/frames/")
    assert first["player"] == {"kind": "video", "url": f"/media/{first['source_path']}#t="
                               f"{first['start_s']:.2f},{first['end_s']:.2f}"}
    assert list(tmp_path.iterdir()) == []  # the upload's copy is gone


def test_a_search_mistake_is_a_400_with_its_message(server, night):
    status, answer = search(server, {"kind": "image"}, ("notes.jpg", b"not a picture"))
    assert status == 400 and "notes.jpg: cannot read image" in answer["error"]
    status, answer = search(server, {"kind": "neuron", "neuron": "kitchen"})
    assert status == 400 and answer["error"]
    status, answer = search(server, {"kind": "image", "topk": "0"}, ("a.jpg", b"x"))
    assert status == 400 and "topk" in answer["error"]


def test_an_upload_over_the_limit_is_refused(server, monkeypatch):
    monkeypatch.setattr("web.app.MAX_UPLOAD_BYTES", 1000)
    status, answer = search(server, {"kind": "image"}, ("big.jpg", b"x" * 2000))
    assert status == 413 and "at most" in answer["error"]


def test_the_timeline_lists_the_day_and_its_clips(server, night):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    _, _, body = request(f"{server}/api/timeline", headers=auth)
    timeline = json.loads(body)
    (day,) = timeline["days"]
    assert day["date"] == DAY and day["clips"] == len(SCENES) and day["stages"]["vision"] == "done"
    _, _, body = request(f"{server}/api/day/{DAY}", headers=auth)
    clips = json.loads(body)["clips"]
    assert [c["source_path"].rsplit("/", 1)[1] for c in clips] == list(SCENES)
    assert all(c["thumbnail"] and c["player"]["kind"] == "video" for c in clips)


def test_the_timeline_shows_the_days_episodes(tmp_path, night):
    episodes = pytest.importorskip("memory.episodes", reason="this version of the memory has no episodes")
    if not hasattr(episodes, "save_episodes"):
        pytest.skip("memory.episodes cannot save episodes yet")
    from memory import open_database

    root = tmp_path / "root"
    shutil.copytree(night, root, symlinks=True)
    with sqlite3.connect(root / "memory" / "episodic.sqlite") as con:
        clip_ids = tuple(i for (i,) in con.execute("SELECT id FROM clips ORDER BY id"))
    engine = open_database(root / "memory" / "episodic.sqlite")
    episodes.save_episodes(engine, DAY, [episodes.NewEpisode(
        clip_ids=clip_ids, start=None, end=None, start_s=0.0, end_s=3.0, recordings=tuple(SCENES),
        loudness=(None,) * len(clip_ids))], [])
    engine.dispose()
    with running(make_app(root, tiny_cfg(), token=TOKEN)) as url:
        _, _, body = request(f"{url}/api/timeline", headers={"Authorization": f"Bearer {TOKEN}"})
    timeline = json.loads(body)
    assert timeline["episodes"] == "available"
    (episode,) = timeline["days"][0]["episodes"]
    assert episode["clips"] == len(SCENES)


# -- the command ---------------------------------------------------------------------------

def test_serve_prints_its_address_with_a_token_and_stops_on_ctrl_c(tmp_path):
    proc = subprocess.Popen([sys.executable, "sleep.py", "serve", "--root", str(tmp_path), "--port", "0"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = [proc.stdout.readline() for _ in range(2)]
        address = lines[1].removeprefix("open ").strip()
        parts = urlsplit(address)
        assert parts.hostname == "127.0.0.1" and parts.query.startswith("token=") and len(parts.query) > 30
        assert request(f"{parts.scheme}://{parts.netloc}/")[0] == 401
        assert request(address)[0] == 303
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "stopped" in out


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.0.0.2", True), ("::1", True),
                                           ("localhost", True), ("0.0.0.0", False), ("::", False),
                                           ("192.168.1.20", False), ("example.org", False)])
def test_only_loopback_hosts_count_as_this_machine(host, loopback):
    assert is_loopback(host) is loopback


# -- a real browser ------------------------------------------------------------------------

def _chromium() -> str | None:
    for candidate in ("/usr/lib/chromium/chromium", shutil.which("chromium"), shutil.which("chromium-headless-shell"),
                      shutil.which("chromium-browser")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.mark.browser
def test_browser_search_by_an_uploaded_frame_shows_its_moment_first(server, night, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    executable = _chromium()
    if executable is None:
        pytest.skip("no chromium on this machine (sudo apt-get install chromium)")
    frame, clip_id = frame_and_clip(night, n=9)
    origin = server
    local, external, errors = [], [], []

    def only_local(route):
        url = route.request.url
        if url.startswith((origin + "/", "data:", "blob:")) or url == origin:
            local.append(url)
            route.continue_()
        else:
            external.append(url)
            route.abort()

    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            # Not offline=True: Chromium's offline mode cuts 127.0.0.1 too. Every request goes
            # through the route instead; anything not to the server is aborted and recorded.
            context = browser.new_context(service_workers="block")
            context.route("**/*", only_local)
            page = context.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))

            refused = page.goto(origin + "/")
            assert refused.status == 401
            errors.clear()  # the refusal itself logs a failed load

            answer = page.goto(f"{origin}/?token={TOKEN}")
            assert answer.status == 200 and page.url == origin + "/"  # the token left the address
            page.wait_for_selector(f'#days li[data-date="{DAY}"]')
            page.select_option("#kind", "image")
            page.set_input_files("#file", str(frame))
            started = time.perf_counter()
            page.click("#by-example button[type=submit]")
            page.wait_for_selector("#results li.hit", timeout=120_000)
            seconds = time.perf_counter() - started
            first = page.get_attribute("#results li.hit", "data-clip-id")
            assert int(first) == clip_id
            video = page.locator("#results li.hit").first.locator("video")
            # The player reads its moment of the recording (a Range request, a media fragment).
            assert video.evaluate("""v => new Promise(done => {
                v.addEventListener("loadedmetadata", () => done(v.currentTime), {once: true});
                v.addEventListener("error", () => done(-1), {once: true});
                v.preload = "metadata"; v.load(); })""") >= 0
            page.screenshot(path=str(tmp_path / "serve.png"), full_page=True)
            print(f"search by an uploaded frame through the page: {seconds:.2f} s; screenshot {tmp_path / 'serve.png'}")

            page.click(f'#days li[data-date="{DAY}"] button')
            page.wait_for_function(f"document.querySelectorAll('#results li.hit').length === {len(SCENES)}")
        finally:
            browser.close()
    assert f"{origin}/static/app.js" in local and any("/api/search" in url for url in local)
    assert external == []
    assert errors == []
