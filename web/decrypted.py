"""A sealed media file served as its plaintext, Range requests honoured.

Starlette's ``FileResponse`` sends a file as it lies on disk, which for a sealed file
(``memory.encryption: on``) is ciphertext. A sealed file is read through the vault instead:
its reader is seekable and decrypts only the chunks a read touches, so a range (a player
seeking in a recording, a browser asking for the end of a video first) costs the 1 MiB
chunks it spans, not the file. Nothing decrypted is written anywhere.

One range per request: a request for several (rare; no browser's player sends one) gets the
whole file, as RFC 9110 lets a server answer any Range request.
"""
from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterator, Mapping
from email.utils import formatdate
from pathlib import Path
from typing import BinaryIO

from starlette.responses import PlainTextResponse, Response, StreamingResponse

CHUNK = 64 << 10  # bytes a piece of the body, as FileResponse sends them
UNSATISFIABLE = "unsatisfiable"


def wanted_range(header: str | None, if_range: str | None, size: int, validators: tuple[str, ...]
                 ) -> tuple[int, int] | str | None:
    """The ``[start, end)`` a ``Range`` header asks of a file of ``size`` bytes.

    Returns:
        ``(start, end)``; :data:`UNSATISFIABLE` when it starts past the end (a 416); ``None``
        for the whole file: no header, one this does not serve (not bytes, several ranges,
        malformed), or an ``If-Range`` that names another version of the file.
    """
    if header is None or (if_range is not None and if_range.strip() not in validators):
        return None
    units, _, spec = header.partition("=")
    if units.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = (part.strip() for part in spec.partition("-"))
    if not dash or not (first or last):
        return None
    try:
        if not first:  # "-N": the last N bytes
            tail = int(last)
            return UNSATISFIABLE if tail <= 0 or size == 0 else (max(size - tail, 0), size)
        start = int(first)
        end = int(last) + 1 if last else size
    except ValueError:
        return None
    if start >= size:
        return UNSATISFIABLE
    return (start, min(end, size)) if end > start else None


def _body(reader: BinaryIO, start: int, end: int) -> Iterator[bytes]:
    """``reader``'s bytes ``[start, end)`` a piece at a time; closes it however the sending ends
    (a player that seeks elsewhere drops the rest)."""
    try:
        reader.seek(start)
        while start < end:
            piece = reader.read(min(CHUNK, end - start))
            if not piece:
                raise RuntimeError(f"{getattr(reader, 'name', 'a sealed file')} ended before its length")
            start += len(piece)
            yield piece
    finally:
        reader.close()


def decrypted_response(vault, path: Path, media_type: str | None, request_headers: Mapping[str, str],
                       method: str = "GET", headers: Mapping[str, str] | None = None) -> Response:
    """The plaintext of the sealed file at ``path`` as an HTTP response: the whole of it (200),
    the range asked for (206), or a 416 for a range past its end.

    Args:
        vault: the root's :class:`core.vault.Vault`, unlocked.
        path: a sealed file under the root (:func:`web.media.served_file` has checked it).
        media_type: its content type.
        request_headers: the request's headers (``Range``, ``If-Range``).
        method: ``HEAD`` answers the headers alone.
        headers: more response headers (``cache-control``).
    Raises:
        SealedFileError: the file is damaged or was sealed elsewhere.
    """
    reader = vault.open(path)
    try:
        size = reader.seek(0, io.SEEK_END)
        modified = os.stat(path).st_mtime
        etag = '"{}"'.format(hashlib.md5(f"{modified}-{size}-plain".encode(), usedforsecurity=False).hexdigest())
        last_modified = formatdate(modified, usegmt=True)
        out = {**(headers or {}), "accept-ranges": "bytes", "etag": etag, "last-modified": last_modified}
        span = wanted_range(request_headers.get("range"), request_headers.get("if-range"), size,
                            (etag, last_modified))
        if span == UNSATISFIABLE:
            reader.close()
            return PlainTextResponse("", status_code=416, headers={**out, "content-range": f"bytes */{size}"})
        start, end = span if isinstance(span, tuple) else (0, size)
        status = 206 if isinstance(span, tuple) else 200
        if status == 206:
            out["content-range"] = f"bytes {start}-{end - 1}/{size}"
        out["content-length"] = str(end - start)
        if method.upper() == "HEAD":
            reader.close()
            return Response(b"", status_code=status, headers=out, media_type=media_type)
    except BaseException:
        reader.close()
        raise
    return StreamingResponse(_body(reader, start, end), status_code=status, headers=out, media_type=media_type)
