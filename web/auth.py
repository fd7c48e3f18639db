"""The token gate: every request shows the token printed at start, or is refused with 401.

A person opens ``/?token=...`` once; the page answers with a redirect to ``/`` that sets an
HttpOnly, SameSite=Strict cookie, so the token leaves the address bar and later requests
(the script, the searches, the media) carry the cookie. Scripts may send
``Authorization: Bearer TOKEN`` instead. Other local users cannot read the memory through
the port, and another site's page cannot make the browser search it (the cookie is never
sent cross-site).

Every response, refusals included, carries headers that keep the page to its own origin
(a response may set a stricter policy of its own: the report page does).
"""
from __future__ import annotations

import hashlib
import secrets

from starlette.datastructures import MutableHeaders
from starlette.requests import HTTPConnection
from starlette.responses import PlainTextResponse

# Nothing but this origin: no CDN, no fonts, no beacons; media may be blob: for previews.
CONTENT_SECURITY_POLICY = ("default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; "
                           "style-src 'self'; script-src 'self'; connect-src 'self'; object-src 'none'; "
                           "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
# A night's report page (/report/DATE): its styles are inline and its pictures data: URIs;
# it runs no script and loads nothing, not even from this origin (the policy its own
# <meta> sets, report/templates/index.html.j2, plus what only a header can say).
REPORT_SECURITY_POLICY = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; media-src data:; "
                          "font-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cross-origin-resource-policy": "same-origin",
}
REFUSED = "sleep: this page needs its token: open the address `sleep.py serve` printed (.../?token=...)\n"


def new_token() -> str:
    """A fresh random token (32 URL-safe characters)."""
    return secrets.token_urlsafe(24)


def cookie_name(token: str) -> str:
    """The cookie that holds ``token``, named after it: cookies ignore ports, so two servers on
    one host must not overwrite each other's."""
    return "sleep_" + hashlib.sha256(token.encode()).hexdigest()[:12]


def _same(given: str | None, token: str) -> bool:
    return given is not None and secrets.compare_digest(given.encode(), token.encode())


class TokenGate:
    """ASGI middleware: refuses any HTTP request without ``token``; adds the security headers.

    The token is accepted from the cookie :func:`cookie_name`, an ``Authorization: Bearer``
    header, or (only for ``GET /``, the address printed at start) the ``token`` query parameter.
    """

    def __init__(self, app, token: str) -> None:
        self.app = app
        self.token = token
        self.cookie = cookie_name(token)

    def allows(self, conn: HTTPConnection) -> bool:
        scheme, _, bearer = conn.headers.get("authorization", "").partition(" ")
        return (_same(conn.cookies.get(self.cookie), self.token)
                or (scheme.lower() == "bearer" and _same(bearer.strip(), self.token))
                or (conn.url.path == "/" and _same(conn.query_params.get("token"), self.token)))

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
            await send(message)

        if not self.allows(HTTPConnection(scope)):
            refusal = PlainTextResponse(REFUSED, status_code=401, headers={"WWW-Authenticate": "Bearer"})
            await refusal(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)
