"""The console's HTTP side: everything under ``/console``, as a plain ASGI app.

Pages are static HTML files whose scripts fetch JSON from ``/console/api/...`` and the
live feed as server-sent events; scripts put whatever came from events into the page as
text (``textContent``), and a Content-Security-Policy allows nothing but this origin's own
files (no inline script, no other host), so an event named ``<img onerror=...>`` stays
text. Assets need no session (they hold no data); every page, API and stream does.

Signing in: ``GET /console?token=T`` (the link an operator is given) or the sign-in form
(``POST /console/sign-in``) sets the session cookie and redirects to ``/console``, so the
token leaves the address bar (and, with ``Referrer-Policy: same-origin``, no other site
ever sees a console URL). State-changing requests (sign-in, sign-out) must come from a
page of this origin (``Sec-Fetch-Site``, else ``Origin``) and, once signed in, carry the
session's CSRF token.
"""

from __future__ import annotations

import asyncio
import contextlib
import urllib.parse
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from typing import Any, TypeVar

import msgspec
from starlette.types import Receive, Scope, Send

from .conversations import Conversations
from .live import Filters, LiveFeed, Viewer
from .sessions import COOKIE, SESSION_TTL_S, Session, Sessions

T = TypeVar("T")
ROOT = "/console"
API = ROOT + "/api"
STATIC = ROOT + "/static/"
HEARTBEAT_S = 15.0  # a comment line on a quiet stream; the session is checked again then
FLUSH_S = 0.25  # a viewer gets at most four messages a second: each carries all that waited
MAX_FORM_BYTES = 4096
PAGES = {  # path -> (page, title); threads and users take the rest of the path as their id
    ROOT: ("live", "Live"),
    ROOT + "/overview": ("overview", "Overview"),
    ROOT + "/threads/": ("thread", "Thread"),
    ROOT + "/users/": ("user", "User"),
}
CONTENT_TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".svg": b"image/svg+xml",
}
CSP = (
    b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self';"
    b" connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
SECURITY: list[tuple[bytes, bytes]] = [
    (b"content-security-policy", CSP),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-store"),
]
_encode = msgspec.json.Encoder().encode
Headers = list[tuple[bytes, bytes]]


class ConsoleApp:
    """Serves ``/console``; the app in front routes every path under it here."""

    def __init__(
        self,
        *,
        sessions: Sessions,
        feed: LiveFeed,
        overview: Callable[[], dict[str, Any]],
        conversations: Conversations,
        on_close: Callable[[], None] = lambda: None,
    ) -> None:
        self._on_close = on_close
        self._sessions = sessions
        self._feed = feed
        self._overview = overview
        self._conversations = conversations
        self._reads = ThreadPoolExecutor(1, thread_name_prefix="console reads")
        folder = resources.files(__package__).joinpath("static")
        self._files = {
            item.name: item.read_bytes()
            for item in folder.iterdir()
            if item.name[item.name.rfind(".") :] in CONTENT_TYPES
        }
        # Each page is the layout (head, navigation, sign-out) around its own <main>, and
        # its script: NAME.html and NAME.js.
        self._pages = {
            page: _filled(
                self._files["layout.html"],
                main=self._files[f"{page}.html"],
                title=title.encode(),
                script=f"{page}.js".encode(),
            )
            for page, title in PAGES.values()
        }

    def close(self) -> None:
        """After serving: let the reads under way end, then close what they read."""
        self._reads.shutdown(wait=True)
        self._conversations.close()
        self._on_close()
        self._sessions.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"].rstrip("/") or "/"
        method: str = scope["method"]
        query = urllib.parse.parse_qs(scope["query_string"].decode("latin-1"))
        if path.startswith(STATIC):
            await self._asset(send, path[len(STATIC) :])
        elif path == ROOT + "/sign-in" and method == "POST":
            await self._sign_in_form(scope, receive, send)
        elif path == ROOT and "token" in query and method == "GET":
            await self._signed_in(send, await self._sessions.sign_in(query["token"][0]), scope)
        else:
            cookie = _cookie(scope)
            session = await self._sessions.current(cookie)
            if session is None:
                await self._signed_out(send, path)
            else:
                await self._serve(scope, receive, send, session, cookie or "")

    async def _serve(
        self, scope: Scope, receive: Receive, send: Send, session: Session, cookie: str
    ) -> None:
        path: str = scope["path"].rstrip("/")
        method: str = scope["method"]
        if path == ROOT + "/sign-out" and method == "POST":
            await self._sign_out(scope, receive, send, session, cookie)
        elif method != "GET":
            await _respond(send, 405, b'{"detail":"Method not allowed."}', _JSON)
        elif path == API + "/live":
            await self._live(scope, receive, send, cookie)
        elif path.startswith(API + "/"):
            await self._api(scope, send, path[len(API) :])
        else:
            await self._page(send, path, session)

    # --- signing in and out ------------------------------------------------------------

    async def _sign_in_form(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not _same_origin(scope):
            await _respond(send, 403, b'{"detail":"Cross-origin request refused."}', _JSON)
            return
        form = await _form(receive)
        token = (form.get("token") or [""])[0]
        await self._signed_in(send, await self._sessions.sign_in(token) if token else None, scope)

    async def _signed_in(self, send: Send, cookie: str | None, scope: Scope) -> None:
        """To ``/console`` with the new session's cookie, or the sign-in form again."""
        if cookie is None:
            message = b"That token is not a valid console token (mistyped, or revoked)."
            page = _filled(self._files["signin.html"], message=message)
            await _respond(send, 401, page, _HTML)
            return
        secure = "; Secure" if scope.get("scheme") == "https" else ""
        value = (
            f"{COOKIE}={cookie}; Path={ROOT}; HttpOnly; SameSite=Strict;"
            f" Max-Age={int(SESSION_TTL_S)}{secure}"
        )
        await _respond(
            send, 303, b"", [(b"location", ROOT.encode()), (b"set-cookie", value.encode())]
        )

    async def _sign_out(
        self, scope: Scope, receive: Receive, send: Send, session: Session, cookie: str
    ) -> None:
        form = await _form(receive)
        if not (_same_origin(scope) and session.csrf_matches((form.get("csrf") or [""])[0])):
            await _respond(send, 403, b'{"detail":"Missing or wrong CSRF token."}', _JSON)
            return
        self._sessions.end(cookie)
        expired = f"{COOKIE}=; Path={ROOT}; HttpOnly; SameSite=Strict; Max-Age=0".encode()
        await _respond(send, 303, b"", [(b"location", ROOT.encode()), (b"set-cookie", expired)])

    async def _signed_out(self, send: Send, path: str) -> None:
        """No session: the sign-in form at ``/console``, a way there from other pages,
        nothing at all from the API."""
        if path.startswith(API + "/") or path == API:
            await _respond(send, 401, b'{"detail":"Sign in to the console first."}', _JSON)
        elif path == ROOT:
            await _respond(send, 200, _filled(self._files["signin.html"], message=b""), _HTML)
        else:
            await _respond(send, 303, b"", [(b"location", ROOT.encode())])

    # --- pages, assets, data -----------------------------------------------------------

    async def _page(self, send: Send, path: str, session: Session) -> None:
        found = PAGES.get(path) or next(
            (
                page
                for prefix, page in PAGES.items()
                if prefix.endswith("/") and path.startswith(prefix)
            ),
            None,
        )
        if found is None:
            await _respond(send, 404, b'{"detail":"Not found."}', _JSON)
            return
        page = _filled(self._pages[found[0]], csrf=session.csrf.encode())
        await _respond(send, 200, page, _HTML)

    async def _asset(self, send: Send, name: str) -> None:
        body = self._files.get(name)
        if body is None or name.endswith(".html"):
            await _respond(send, 404, b'{"detail":"Not found."}', _JSON)
            return
        content_type = CONTENT_TYPES[name[name.rfind(".") :]]
        await _respond(send, 200, body, [(b"content-type", content_type)])

    async def _api(self, scope: Scope, send: Send, path: str) -> None:
        query = urllib.parse.parse_qs(scope["query_string"].decode("latin-1"))
        project = (query.get("project") or [""])[0]
        raw = scope.get("raw_path") or scope["path"].encode()
        read: Callable[[], Any] | None = None
        if path == "/overview":
            read = self._overview
        elif path.startswith("/threads/") and project:
            thread = _rest(raw, API + "/threads/")
            read = lambda: self._conversations.thread(project, thread)  # noqa: E731
        elif path.startswith("/users/") and project:
            user = _rest(raw, API + "/users/")
            read = lambda: self._conversations.user(project, user)  # noqa: E731
        if read is None:
            await _respond(send, 404, b'{"detail":"Not found (a project is needed)."}', _JSON)
            return
        try:
            found = await self._off_loop(read)
        except Exception as exc:  # an engine down, a store unreadable: say so on the page
            detail = f"Could not read: {type(exc).__name__}: {str(exc)[:500]}"
            await _respond(send, 503, _encode({"detail": detail}), _JSON)
            return
        await _respond(send, 200, _encode(found), _JSON)

    def _off_loop(self, read: Callable[[], T]) -> Awaitable[T]:
        return asyncio.get_running_loop().run_in_executor(self._reads, read)

    # --- the live feed -----------------------------------------------------------------

    async def _live(self, scope: Scope, receive: Receive, send: Send, cookie: str) -> None:
        """Server-sent events until the browser goes, its session ends or the node stops."""
        query = urllib.parse.parse_qs(scope["query_string"].decode("latin-1"))
        filters = Filters(**{name: (query.get(name) or [None])[0] or None for name in _FILTERS})
        viewer = self._feed.watch(filters)
        gone = asyncio.ensure_future(_disconnected(receive, viewer))
        headers = [(b"content-type", b"text/event-stream"), (b"x-accel-buffering", b"no")]
        try:
            await send(
                {"type": "http.response.start", "status": 200, "headers": [*headers, *SECURITY]}
            )
            await _chunk(send, b"retry: 1000\n\n")
            while not gone.done():
                message = await viewer.next(HEARTBEAT_S)
                if gone.done():
                    break
                await _chunk(send, message or b": still here\n\n")
                if message is None and await self._sessions.current(cookie) is None:
                    break
                await asyncio.sleep(FLUSH_S)
            with contextlib.suppress(OSError):
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            self._feed.leave(viewer)
            gone.cancel()


_FILTERS = ("project", "event", "user", "thread")
_JSON: Headers = [(b"content-type", b"application/json")]
_HTML: Headers = [(b"content-type", CONTENT_TYPES[".html"])]


def _filled(page: bytes, **fills: bytes) -> bytes:
    """``page`` with its ``{{name}}`` blanks filled (with our own texts, never a client's)."""
    for blank, text in fills.items():
        page = page.replace(b"{{%s}}" % blank.encode(), text)
    return page


async def _disconnected(receive: Receive, viewer: Viewer) -> None:
    """Returns once the client is gone, waking the viewer."""
    while (await receive())["type"] != "http.disconnect":
        pass
    viewer.close()


async def _chunk(send: Send, body: bytes) -> None:
    await send({"type": "http.response.body", "body": body, "more_body": True})


async def _respond(send: Send, status: int, body: bytes, headers: Headers) -> None:
    start = [*headers, (b"content-length", b"%d" % len(body)), *SECURITY]
    await send({"type": "http.response.start", "status": status, "headers": start})
    await send({"type": "http.response.body", "body": body})


async def _form(receive: Receive) -> dict[str, list[str]]:
    """A small urlencoded form (anything beyond ``MAX_FORM_BYTES`` is ignored)."""
    body = b""
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        body += message.get("body", b"")
        more = message.get("more_body", False) and len(body) <= MAX_FORM_BYTES
    return urllib.parse.parse_qs(body[:MAX_FORM_BYTES].decode("latin-1"))


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _cookie(scope: Scope) -> str | None:
    """The session cookie's value (the first of that name)."""
    for key, value in scope["headers"]:
        if key == b"cookie":
            for part in str(value.decode("latin-1")).split(";"):
                name, _, text = part.strip().partition("=")
                if name == COOKIE and text:
                    return text
    return None


def _same_origin(scope: Scope) -> bool:
    """The request comes from a page of this origin, as the browser says: ``Sec-Fetch-Site``
    (every current browser), else ``Origin`` naming our host."""
    site = _header(scope, b"sec-fetch-site")
    if site is not None:
        return site == "same-origin"
    origin, host = _header(scope, b"origin"), _header(scope, b"host")
    scheme = scope.get("scheme", "http")
    return origin is not None and host is not None and origin == f"{scheme}://{host}"


def _rest(raw_path: bytes, prefix: str) -> str:
    """The id after ``prefix`` in the path as sent (an id may hold a ``/``, percent-encoded)."""
    return urllib.parse.unquote(raw_path.decode("latin-1")[len(prefix) :].rstrip("/"))
