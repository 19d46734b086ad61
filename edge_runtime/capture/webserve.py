"""What the review page and the live capture page share to be served on a lab network: Starlette
on uvicorn (pure Python; request parsing, limits and concurrency from a well-kept server instead
of http.server, which says of itself that it is not for production), plus:

- security headers on every response (CSP without inline script and frame-ancestors 'none',
  X-Frame-Options DENY, nosniff, no-referrer, no-store);
- a Host allow-list (the listening address, localhost names, what --host names; on 0.0.0.0 also
  this machine's names and addresses), against DNS rebinding;
- a random token made at start and printed in the URL (as Jupyter does): the first visit with
  ?token= sets a cookie (HttpOnly, SameSite=Strict), every request without either is 403;
- the Origin of every write must be this server;
- request bodies of at most 64 KB (413), read within a time limit (408), JSON checked against a
  small schema per endpoint (400 with the reason); a connection must send its request head
  within HEAD_TIMEOUT_S; at most LIMIT_CONCURRENCY connections (then 503) and a small thread pool.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import secrets
import socket
import threading
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import parse_qs

MAX_BODY = 64 * 1024


def _timeout_s() -> float:
    """Seconds a client has to send its request head, and its body: EDGE_BLOODCLS_HTTP_TIMEOUT_S
    (tests use 1 s); read when the module loads."""
    try:
        return max(0.2, float(os.environ.get("EDGE_BLOODCLS_HTTP_TIMEOUT_S", "10")))
    except ValueError:
        return 10.0


BODY_TIMEOUT_S = HEAD_TIMEOUT_S = _timeout_s()
KEEP_ALIVE_S = 5
LIMIT_CONCURRENCY = 32
THREADS = 8  # the store serialises its connection anyway; more threads would only queue

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
# The report page has its CSS inline (it is one self-contained file) and no script at all.
CSP_REPORT = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
HEADERS = [
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
]


class BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def json_for_html(value: Any) -> str:
    """JSON that is safe inside an HTML element: no '<', '>' or '&' (a '</script>' in a name cannot
    end the element), and U+2028/2029 escaped (line ends for older JavaScript parsers)."""
    s = json.dumps(value)
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        s = s.replace(ch, esc)
    return s


# ---------------------------------------------------------------- request bodies


@dataclass(frozen=True)
class Field:
    """One key of a JSON body: its type (bool is never an int here) and, for ints, a range; for
    strings, a length limit and optionally the values allowed."""

    kind: type
    lo: int = 0
    hi: int = 2**31 - 1
    max_len: int = 500
    choices: tuple[str, ...] | None = None


def check(body: Any, schema: dict[str, Field]) -> dict:
    """The body if it is an object with exactly the schema's keys, each of its type and range;
    else BadRequest(400) naming the first problem."""
    if not isinstance(body, dict):
        raise BadRequest(400, f"a JSON object expected, not a {type(body).__name__}")
    extra = sorted(set(body) - set(schema))
    if extra:
        raise BadRequest(400, f"unexpected field(s): {', '.join(map(repr, extra))[:200]}")
    for key, f in schema.items():
        if key not in body:
            raise BadRequest(400, f"missing field '{key}'")
        v = body[key]
        if f.kind is int:
            if type(v) is not int:  # True, 1.9 and "1" are not integers
                raise BadRequest(400, f"'{key}' must be an integer, not {type(v).__name__}")
            if not f.lo <= v <= f.hi:
                raise BadRequest(400, f"'{key}' must be in {f.lo}..{f.hi}")
        elif f.kind is str:
            if not isinstance(v, str):
                raise BadRequest(400, f"'{key}' must be a string, not {type(v).__name__}")
            if len(v) > f.max_len:
                raise BadRequest(400, f"'{key}' is longer than {f.max_len} characters")
            if f.choices is not None and v not in f.choices:
                raise BadRequest(400, f"'{key}' must be one of {', '.join(f.choices)}")
    return body


async def read_json(request, schema: dict[str, Field]) -> dict:
    """The request's JSON body: application/json (a cross-site form cannot send it without a
    preflight this server never grants), at most MAX_BODY bytes, read within BODY_TIMEOUT_S."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise BadRequest(415, "application/json only")
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
        raise BadRequest(413, f"request body over {MAX_BODY} bytes" if length.isdigit() else "bad Content-Length")

    async def body() -> bytes:
        data = bytearray()
        async for chunk in request.stream():
            data += chunk
            if len(data) > MAX_BODY:
                raise BadRequest(413, f"request body over {MAX_BODY} bytes")
        return bytes(data)

    try:
        raw = await asyncio.wait_for(body(), BODY_TIMEOUT_S)
    except asyncio.TimeoutError:
        raise BadRequest(408, f"request body not received within {BODY_TIMEOUT_S:g} s") from None
    try:
        value = json.loads(raw or b"{}")
    except (ValueError, RecursionError):
        raise BadRequest(400, "the body is not valid JSON") from None
    return check(value, schema)


# ---------------------------------------------------------------- middleware (plain ASGI)


def _header(scope, name: bytes) -> str:
    for k, v in scope.get("headers", []):
        if k == name:
            return v.decode("latin-1")
    return ""


async def _plain(send, status: int, text: str, extra: list | None = None) -> None:
    body = json.dumps({"error": text}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            + (extra or []),
        }
    )
    await send({"type": "http.response.body", "body": body})


class Guard:
    """Headers on every response, Host allow-list, token (query or cookie), Origin on writes.
    Outermost, so that even its own refusals carry the headers."""

    def __init__(self, app, hosts: set[str], token: str, cookie: str, csp: Callable[[str], str]):
        self.app, self.hosts, self.token, self.cookie, self.csp = app, hosts, token, cookie, csp

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "/")

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message = dict(message)
                message["headers"] = [
                    *message.get("headers", []),
                    *HEADERS,
                    (b"content-security-policy", self.csp(path).encode()),
                ]
            await send(message)

        host = _host_name(_header(scope, b"host"))
        if host not in self.hosts:
            return await _plain(send_with_headers, 421 if host else 400, "this server does not answer to that Host")
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        given = (query.get("token") or [""])[0]
        by_query = bool(given) and hmac.compare_digest(given.encode(), self.token.encode())
        if not by_query and not hmac.compare_digest(_cookie(scope, self.cookie).encode(), self.token.encode()):
            return await _plain(send_with_headers, 403, "no or wrong token: open the URL the server printed")
        if scope["method"] not in ("GET", "HEAD"):
            origin = _header(scope, b"origin")
            host_header = _header(scope, b"host")
            if origin != f"http://{host_header}":
                return await _plain(send_with_headers, 403, "cross-origin write refused (Origin must be this server)")
        if by_query:
            # The token in the URL becomes a cookie, so that the page's own requests need not
            # carry it (a script without cookies may give it in each URL instead).
            cookie = f"{self.cookie}={self.token}; Path=/; HttpOnly; SameSite=Strict".encode()
            inner = send_with_headers

            async def send_with_headers(message):
                if message["type"] == "http.response.start":
                    message = dict(message)
                    message["headers"] = [*message.get("headers", []), (b"set-cookie", cookie)]
                await inner(message)

        await self.app(scope, receive, send_with_headers)


def _cookie(scope, name: str) -> str:
    for part in _header(scope, b"cookie").split(";"):
        k, _, v = part.strip().partition("=")
        if k == name:
            return v
    return ""


def _host_name(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):  # [::1]:8765
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def allowed_hosts(host: str, extra: tuple[str, ...] = ()) -> set[str]:
    """The names a browser may use for this server: localhost names, the address it listens on,
    and for 0.0.0.0 / :: this machine's name and addresses (what another computer types)."""
    names = {"127.0.0.1", "localhost", "::1", host.lower(), *(e.lower() for e in extra)}
    if host in ("0.0.0.0", "::", ""):
        me = socket.gethostname().lower()
        names |= {me, f"{me}.local", socket.getfqdn().lower()}
        try:
            names |= {str(a[4][0]).lower() for a in socket.getaddrinfo(me, None)}
        except OSError:  # no resolvable name: the other names still work
            pass
    return names


# ---------------------------------------------------------------- running


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before serving so that the URL (and a port 0's number) can be
    printed first. OSError as the caller reports it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(64)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def _protocol() -> type:
    """uvicorn's h11 protocol with a time limit on the request head: uvicorn times out idle
    keep-alive connections but not a client that sends its headers a byte at a time."""
    # the web server's dependencies: the [edge] extra, only when a page is served
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class TimedH11Protocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None

        def _arm(self) -> None:
            self._disarm()
            self._head_timer = self.loop.call_later(HEAD_TIMEOUT_S, self._too_slow)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _too_slow(self) -> None:
            if self.conn.their_state in (h11.IDLE,) and not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return TimedH11Protocol


class WebServer:
    """A Starlette app on uvicorn, behind Guard, on a socket bound at creation."""

    def __init__(
        self,
        app,
        host: str,
        port: int,
        csp: Callable[[str], str],
        allow: tuple[str, ...] = (),
        on_close: Callable[[], None] | None = None,
    ):
        # the web server's dependencies: the [edge] extra, only when a page is served
        import uvicorn

        self.host = host
        self.sock = bind(host, port)
        self.port = self.sock.getsockname()[1]
        self.token = secrets.token_urlsafe(24)
        self.hosts = allowed_hosts(host, allow)
        guarded = Guard(app, self.hosts, self.token, f"edge_bloodcls_{self.port}", csp)
        self.config = uvicorn.Config(
            guarded,
            http=_protocol(),
            lifespan="off",
            access_log=False,
            log_level="warning",
            timeout_keep_alive=KEEP_ALIVE_S,
            limit_concurrency=LIMIT_CONCURRENCY,
            server_header=False,
            date_header=False,
            h11_max_incomplete_event_size=16 * 1024,
        )
        self.server = uvicorn.Server(self.config)
        self.thread: threading.Thread | None = None
        self.on_close = on_close

    @property
    def base(self) -> str:
        shown = (
            "127.0.0.1"
            if self.host in ("0.0.0.0", "")
            else "[::1]"
            if self.host == "::"
            else f"[{self.host}]"
            if ":" in self.host
            else self.host
        )
        return f"http://{shown}:{self.port}/"

    @property
    def url(self) -> str:
        """What to open: the address with the token (the browser keeps it as a cookie)."""
        return f"{self.base}?token={self.token}"

    def serve(self) -> None:
        """In this thread until Ctrl-C or stop()."""
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        # the web server's dependencies: the [edge] extra, only when a page is served
        import anyio.to_thread

        anyio.to_thread.current_default_thread_limiter().total_tokens = THREADS
        await self.server.serve(sockets=[self.sock])

    def start(self) -> WebServer:
        """In a daemon thread (tests, the live view beside capture)."""
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()
        while not self.server.started and self.thread.is_alive():
            threading.Event().wait(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(10)
        self.close()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
        if self.on_close is not None:
            self.on_close()
            self.on_close = None
