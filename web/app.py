"""The Starlette application of ``sleep.py serve``: the page, the search, the timeline, the media.

Routes (every one behind :class:`web.auth.TokenGate`):

- ``GET /``: the page (``static/index.html``); ``/?token=...`` sets the cookie and redirects here.
- ``GET /static/{file}``: its script and style sheet.
- ``POST /api/search``: a form with ``kind`` (``image``, ``sound``, ``fragment`` with a
  ``file``; ``journal`` with ``text``; ``neuron`` with ``neuron`` and optionally ``not``) and
  ``topk``; answers ``{"kind", "seconds", "hits"}`` (or ``"entries"`` for the journal), each hit
  :meth:`memory.Hit.as_dict` plus its ``thumbnail`` and ``player`` (:mod:`web.media`). A mistake
  (:class:`core.errors.UsageError`) is a 400 with ``{"error": message}``.
- ``GET /api/timeline``: every day with its clip count, stages and episodes.
- ``GET /api/day/{date}``: a page of the day's clips in time order, each with its media.
- ``GET /media/{path}``: a media file under ``data/`` or ``memory/keep/`` (Range requests work);
  a sealed one (``memory.encryption: on``) is decrypted as it is sent (:mod:`web.decrypted`).
- ``GET /report/{date}``: that night's report page (``reports/{date}/index.html``), decrypted
  when the memory is sealed.

Every search goes through :func:`api.query` or :func:`api.journal_query`, the functions the
command line calls, in a worker thread so the page stays responsive.
"""
from __future__ import annotations

import logging
import os
import re
import tempfile
import time
from pathlib import Path, PurePosixPath

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

import api
from api.args import config_of, paths_of
from core.config import SleepConfig
from core.dates import parse_date
from core.errors import UsageError
from core.paths import Paths
from core.sealed import SealedFileError, is_sealed
from core.vault import unlock
from memory import make_sessionmaker, middle_frames, open_database
from memory.media import clip_days, clip_media
from report.build import read_report
from web.auth import REPORT_SECURITY_POLICY, TokenGate, cookie_name, new_token
from web.decrypted import decrypted_response
from web.media import clip_view, media_type, served_file

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
MAX_UPLOAD_BYTES = 50 * 1024 * 1024
MAX_TOPK = 100
DAY_PAGE = 60  # clips per page of a day
FILE_KINDS = {"image": "image", "sound": "audio", "fragment": "fragment"}  # form kind -> api.query keyword
KINDS = (*FILE_KINDS, "journal", "neuron")
NO_STORE = {"cache-control": "no-store"}
MEDIA_CACHE = {"cache-control": "private, max-age=600"}


def make_app(root: str | os.PathLike | Paths, config: SleepConfig | str | os.PathLike | None = None,
             token: str | None = None) -> Starlette:
    """The page over the memory under ``root``.

    Args:
        root: the folder holding ``data/`` and ``memory/`` (or its :class:`Paths`).
        config: a :class:`SleepConfig`, or a YAML file (``None``: the default config); read
            once, now, so a bad config stops the start rather than the first search.
        token: the token every request must show; ``None`` makes a random one
            (:func:`web.auth.new_token`). The app's ``state.token`` holds it.
    Returns:
        the Starlette application (serve it with :func:`web.server.running` or uvicorn).
    Raises:
        ConfigError: the config file is invalid.
        MasterKeyError: the memory is sealed and no passphrase opens it, or the config's
            ``memory.encryption`` disagrees with the memory.
    """
    paths = paths_of(root)
    cfg = config_of(config, None)
    unlock(paths.root, cfg.memory)  # a sealed memory without its key stops the start, not the first search
    token = token or new_token()
    pages = _Pages(paths, cfg, token)
    app = Starlette(
        routes=[Route("/", pages.index), Route("/api/search", pages.search, methods=["POST"]),
                Route("/api/timeline", pages.timeline), Route("/api/day/{date}", pages.day),
                Route("/media/{path:path}", pages.media), Route("/report/{date}", pages.report),
                Mount("/static", StaticFiles(directory=STATIC))],
        middleware=[Middleware(TokenGate, token=token)])
    app.state.token = token
    app.state.paths = paths
    return app


class _Pages:
    """The route handlers, sharing the root, the config and the token."""

    def __init__(self, paths: Paths, cfg: SleepConfig, token: str) -> None:
        self.paths, self.cfg, self.token = paths, cfg, token

    async def index(self, request: Request) -> Response:
        if "token" in request.query_params:  # the gate checked it: keep it in a cookie, out of the address
            response = RedirectResponse("/", status_code=303)
            response.set_cookie(cookie_name(self.token), self.token, httponly=True, samesite="strict", path="/")
            return response
        return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8", headers=NO_STORE)

    async def search(self, request: Request) -> Response:
        size = request.headers.get("content-length")
        if size is None or not size.isdigit():
            return _error("send the form with a Content-Length", 411)
        if int(size) > MAX_UPLOAD_BYTES:
            return _error(f"upload of {int(size) / 2**20:.0f} MB refused: at most {MAX_UPLOAD_BYTES // 2**20} MB", 413)
        started = time.perf_counter()
        async with request.form(max_files=1, max_fields=10) as form:
            try:
                kind = str(form.get("kind") or "")
                if kind not in KINDS:
                    raise UsageError(f"kind {kind!r}: expected one of {', '.join(KINDS)}")
                topk = _topk(form.get("topk"))
                if kind in FILE_KINDS:
                    hits = await self._search_file(kind, form.get("file"), topk)
                elif kind == "journal":
                    entries = await run_in_threadpool(api.journal_query, self.paths, str(form.get("text") or ""),
                                                      topk=topk, config=self.cfg)
                    return _json({"kind": kind, "seconds": _since(started),
                                  "entries": self._entry_views([e.as_dict() for e in entries])})
                else:
                    wanted = str(form.get("neuron") or "").strip()
                    unwanted = str(form.get("not") or "").strip() or None
                    if not wanted:
                        raise UsageError("neuron: name at least one neuron (an id or a name; several with commas)")
                    hits = await run_in_threadpool(lambda: api.query(self.paths, positive=wanted, negative=unwanted,
                                                                     topk=topk, config=self.cfg))
            except UsageError as exc:
                return _error(str(exc), 400)
        return _json({"kind": kind, "seconds": _since(started), "hits": self._views([h.as_dict() for h in hits])})

    async def _search_file(self, kind: str, upload, topk: int):
        if not isinstance(upload, UploadFile) or not upload.filename:
            raise UsageError(f"{kind}: choose a file to search by")
        # A private temporary copy (mkstemp: owner-only), gone once the search is done.
        suffix = re.sub(r"[^A-Za-z0-9.]", "", Path(upload.filename).suffix)[:10]
        handle, name = tempfile.mkstemp(prefix="sleep-upload-", suffix=suffix)
        try:
            with os.fdopen(handle, "wb") as out:
                while chunk := await upload.read(1 << 20):
                    out.write(chunk)
            keyword = FILE_KINDS[kind]
            try:
                return await run_in_threadpool(lambda: api.query(self.paths, **{keyword: name}, topk=topk,
                                                                 config=self.cfg))
            except UsageError as exc:  # name the file as the person chose it, not our copy
                raise UsageError(str(exc).replace(name, upload.filename)) from None
        finally:
            os.unlink(name)

    def _media(self, clip_ids) -> dict:
        if not self.paths.database.exists():
            return {}
        engine = open_database(self.paths.database)
        try:
            with make_sessionmaker(engine)() as session:
                return {m.clip_id: m for m in clip_media(session, clip_ids=clip_ids)}
        finally:
            engine.dispose()

    def _views(self, clips: list[dict]) -> list[dict]:
        media = self._media([c["clip_id"] for c in clips])
        return [clip_view(self.paths.root, c, media.get(c["clip_id"])) for c in clips]

    def _entry_views(self, entries: list[dict]) -> list[dict]:
        media = self._media([c["clip_id"] for e in entries for c in e["clips"]])
        return [{**e, "clips": [clip_view(self.paths.root, c, media.get(c["clip_id"])) for c in e["clips"]]}
                for e in entries]

    async def timeline(self, request: Request) -> Response:
        return _json(await run_in_threadpool(self._timeline))

    def _timeline(self) -> dict:
        nights = api.status(self.paths)["nights"]
        days: dict[str, dict] = {}
        reader = _episode_reader()
        if self.paths.database.exists():
            engine = open_database(self.paths.database)
            try:
                with make_sessionmaker(engine)() as session:
                    counted = clip_days(session)
                for date, clips in counted:
                    days[date] = {"date": date, "clips": clips,
                                  "episodes": reader(engine, date) if reader else None}
            finally:
                engine.dispose()
        for date, stages in nights.items():
            days.setdefault(date, {"date": date, "clips": 0, "episodes": None})["stages"] = {
                name: s["status"] for name, s in stages.items()}
        for date, day in days.items():
            page = self.paths.root / "reports" / date / "index.html"
            day["report"] = f"/report/{date}" if page.is_file() else None
        return {"days": [days[d] for d in sorted(days, reverse=True)],
                "episodes": "available" if reader else "not built in this version of sleep"}

    async def day(self, request: Request) -> Response:
        try:
            date = parse_date(request.path_params["date"]).isoformat()
            offset = int(request.query_params.get("offset", "0"))
        except (UsageError, ValueError) as exc:
            return _error(str(exc), 400)
        return _json(await run_in_threadpool(self._day, date, max(offset, 0)))

    def _day(self, date: str, offset: int) -> dict:
        if not self.paths.database.exists():
            return {"date": date, "offset": offset, "clips": [], "more": False}
        engine = open_database(self.paths.database)
        try:
            with make_sessionmaker(engine)() as session:
                media = clip_media(session, date=date, limit=DAY_PAGE + 1, offset=offset)
                frames = middle_frames(session, [m.clip_id for m in media])
        finally:
            engine.dispose()
        clips = [clip_view(self.paths.root, {"clip_id": m.clip_id, "date": m.date, "source_path": m.source_path,
                                             "start_s": m.start_s, "end_s": m.end_s,
                                             "frame_path": frames.get(m.clip_id)}, m)
                 for m in media[:DAY_PAGE]]
        return {"date": date, "offset": offset, "clips": clips, "more": len(media) > DAY_PAGE}

    async def media(self, request: Request) -> Response:
        relative = request.path_params["path"]
        path = served_file(self.paths.root, relative)
        if path is None:
            return PlainTextResponse("not a media file of this memory\n", status_code=404)
        vault = self.paths.vault
        if vault.sealing and await run_in_threadpool(is_sealed, path):
            # By the name it was sealed under: data/ may be a link to another disk, which
            # served_file has resolved.
            sealed_as = self.paths.root.joinpath(*PurePosixPath(relative).parts)
            try:
                return await run_in_threadpool(decrypted_response, vault, sealed_as, media_type(relative),
                                               request.headers, request.method, MEDIA_CACHE)
            except SealedFileError as exc:
                log.warning("media: %s", exc)
                return PlainTextResponse(f"{exc}\n", status_code=500, headers=NO_STORE)
        return FileResponse(path, media_type=media_type(relative), headers=MEDIA_CACHE)

    async def report(self, request: Request) -> Response:
        try:
            date = parse_date(request.path_params["date"])
        except UsageError as exc:
            return PlainTextResponse(f"{exc}\n", status_code=400, headers=NO_STORE)
        try:
            page = await run_in_threadpool(read_report, date, self.paths)
        except UsageError as exc:  # no report of that night
            return PlainTextResponse(f"{exc}\n", status_code=404, headers=NO_STORE)
        # The page is whole in itself (inline styles, pictures as data: URIs): it may load nothing.
        return HTMLResponse(page, headers={**NO_STORE, "content-security-policy": REPORT_SECURITY_POLICY})


def _episode_reader():
    """``memory.episodes.day_episodes`` where this version of the memory has episodes, else ``None``."""
    try:
        from memory import episodes
    except ImportError:
        return None
    return getattr(episodes, "day_episodes", None)


def _topk(value) -> int:
    text = str(value or "10").strip()
    if not text.isdigit() or not 1 <= int(text) <= MAX_TOPK:
        raise UsageError(f"topk {text!r}: expected a whole number from 1 to {MAX_TOPK}")
    return int(text)


def _since(started: float) -> float:
    return round(time.perf_counter() - started, 3)


def _json(data: dict) -> JSONResponse:
    return JSONResponse(data, headers=NO_STORE)


def _error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=NO_STORE)
