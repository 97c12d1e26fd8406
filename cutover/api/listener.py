"""The API's listening socket: no client can take the engine's descriptors or loop time.

Any client that can open a TCP connection could otherwise stop the engine: connections that
never finish their headers used up the open-files limit, the HAProxy router then could not
open its runtime socket, a rollback came late, and asyncio logged a traceback per failed
accept. So the listener, not aiohttp's site, accepts connections, and bounds them:

* at most :func:`connection_cap` connections are open at once, which leaves the engine a
  reserve of descriptors (routers, checks, the store, webhooks) below the open-files limit;
* at the cap, a waiting newcomer takes the place of the oldest connection that is not in the
  middle of a request (an idle keep-alive or a request head still arriving): such a client
  has lost nothing it sent, and a flood of them cannot lock out an operator. With every
  connection busy, accepting pauses and the kernel's backlog holds the newcomers
  (back-pressure, not an accept-error storm);
* a request's line and headers, and a TLS handshake, must arrive within ``header_timeout``;
  an idle kept-alive connection is closed after ``keepalive_timeout``;
* an accept that fails for want of descriptors or memory is retried after a pause and
  counted in a :class:`~cutover.observability.logging.RateLimitedLog`, not a line each;
* what aiohttp refuses itself (a malformed request, a line or header over
  :data:`MAX_LINE`) is answered as JSON ``{"error": {"code", "message"}}`` that never echoes
  the request (it could hold a token), with no version in ``Server``.

asyncio's ``create_server`` offers none of these (its accept loop logs every failure and cannot
pause), so the loop here uses ``sock_accept`` and ``connect_accepted_socket``; requests are
still parsed and handled by aiohttp's own ``RequestHandler``, subclassed for the timer and the
error answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import ssl
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import LineTooLong

from cutover.observability.logging import RateLimitedLog

__all__ = [
    "MAX_LINE",
    "MIN_CONNECTIONS",
    "SERVER",
    "ApiListener",
    "connection_cap",
    "security_headers",
]

#: Longest request line or header field taken, bytes (aiohttp's default); longer is 431.
MAX_LINE = 8190
#: The cap never goes below this, however low the open-files limit: the API stays usable.
MIN_CONNECTIONS = 16
#: The ``Server`` header: the product, without versions to look vulnerabilities up by.
SERVER = "cutover"
#: Strict-Transport-Security under TLS (RFC 6797): one year.
HSTS = "max-age=31536000"
#: Pause before accepting again after the process ran out of descriptors or memory, seconds.
ACCEPT_RETRY = 0.1
#: At the cap with every connection busy, how often to look for one that became idle, seconds.
ROOM_POLL = 0.1
#: Connections the kernel queues for accept (capped by net.core.somaxconn). A full queue
#: drops a newcomer's SYN, and its client tries again only after 1 s, then 3 s: deep enough
#: that a flood of connections at the cap queues an operator's instead of dropping it.
_BACKLOG = 4096
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def connection_cap(configured: int, open_files: int | None, reserve: int) -> int:
    """The most API connections open at once: ``api.max_connections``, lowered to the
    open-files limit minus the engine's ``reserve`` (``open_files`` None: unlimited) but not
    below :data:`MIN_CONNECTIONS` by that."""
    if open_files is None:
        return configured
    return min(configured, max(MIN_CONNECTIONS, open_files - reserve))


def security_headers(*, secure: bool) -> dict[str, str]:
    """Headers every answer carries: ``Server`` without versions; HSTS under TLS."""
    headers = {"Server": SERVER}
    if secure:
        headers["Strict-Transport-Security"] = HSTS
    return headers


def _resolve(waiting: asyncio.Future[None]) -> None:
    if not waiting.done():
        waiting.set_result(None)


class _ApiConnection(web.RequestHandler):
    """aiohttp's request handler with a header-read timer and JSON answers to what its parser
    refuses. The timer runs from the connection's start, and on a kept-alive connection from
    the first byte of each next request, until a request head is parsed."""

    def __init__(self, manager: web.Server, *, listener: ApiListener, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._listener = listener
        self._head_timer: asyncio.TimerHandle | None = None

    @property
    def between_requests(self) -> bool:
        """No request is being handled or queued: closing it loses nothing a client sent
        completely."""
        return not self._request_in_progress and not self._messages

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._listener.opened(self)
        self._start_head_timer()

    def data_received(self, data: bytes) -> None:
        if self._head_timer is None and self.between_requests:
            self._start_head_timer()
        requests = self._request_count
        super().data_received(data)
        if self._request_count != requests:
            self._stop_head_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)
        self._listener.closed(self)

    def _start_head_timer(self) -> None:
        self._head_timer = self._loop.call_later(
            self._listener.header_timeout, self._head_timed_out
        )

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.between_requests:
            self.force_close()  # closes the transport too

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """A JSON refusal that never echoes the request (aiohttp's plain-text one quotes the
        start of an over-long line: with a long ``Authorization`` header, the token)."""
        if request.writer.output_size > 0:  # an answer is under way: only closing is left
            raise ConnectionError("the answer had started when the request failed")
        if isinstance(exc, LineTooLong):
            # RFC 6585 §5; aiohttp raises it for the request line and a header field alike
            status, code = 431, "header_too_large"
            text = f"a request line or header field is longer than {MAX_LINE} bytes"
        elif status == 500:
            code, text = "internal", "internal error; see the daemon's log"
            self._listener.internal_errors.note(error=repr(exc))
        else:
            code, text = "bad_request", "the request is not valid HTTP/1.1"
        if status != 500:
            self._listener.refusals.note(
                status=status, error=type(exc).__name__, remote=request.remote
            )
        answer = web.json_response(
            {"error": {"code": code, "message": text}},
            status=status,
            reason=HTTPStatus(status).phrase,
            headers=security_headers(secure=request.secure),
        )
        answer.force_close()
        return answer


class ApiListener:
    """Accepts API connections for an aiohttp ``server`` (``AppRunner.server``) within a cap.

    :meth:`start` binds every address ``host`` resolves to; :meth:`stop` stops accepting.
    The connections themselves are shut down by the runner's ``cleanup()``."""

    def __init__(
        self,
        server: web.Server,
        *,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None,
        max_connections: int,
        header_timeout: float,
        keepalive_timeout: float,
    ) -> None:
        self.server = server
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.keepalive_timeout = keepalive_timeout
        self.refusals = RateLimitedLog("refused malformed HTTP requests")
        self.internal_errors = RateLimitedLog("the HTTP server failed on a request")
        self.accept_errors = RateLimitedLog(
            "could not accept an API connection: retrying after a pause"
        )
        self.sockets: list[socket.socket] = []
        #: open API connections, oldest first; ``_handshaking`` counts those not yet in it
        self._open: dict[_ApiConnection, None] = {}
        self._handshaking = 0
        self._room = asyncio.Event()
        self._room.set()
        self._accepting: list[asyncio.Task[None]] = []
        self._connecting: set[asyncio.Task[None]] = set()

    @property
    def open_connections(self) -> int:
        return len(self._open) + self._handshaking

    @property
    def bound_port(self) -> int:
        """The port bound (``port`` 0 picks a free one)."""
        return int(self.sockets[0].getsockname()[1])

    async def start(self) -> None:
        """Bind and listen; an ``OSError`` (address in use, not known here) goes to the caller."""
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(
            self.host, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        try:
            for family, kind, proto, _, address in dict.fromkeys(infos):
                sock = socket.socket(family, kind, proto)
                self.sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
                sock.listen(_BACKLOG)
                sock.setblocking(False)
        except OSError:
            self._close_sockets()
            raise
        self._accepting = [
            asyncio.create_task(self._accept(sock), name=f"api-accept-{i}")
            for i, sock in enumerate(self.sockets)
        ]

    async def stop(self) -> None:
        """Stop accepting and close the listening sockets; open connections stay for the
        runner's graceful shutdown."""
        tasks = [*self._accepting, *self._connecting]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._accepting = []
        self._close_sockets()
        for log in (self.refusals, self.internal_errors, self.accept_errors):
            log.flush()

    def opened(self, connection: _ApiConnection) -> None:
        self._open[connection] = None

    def closed(self, connection: _ApiConnection) -> None:
        self._open.pop(connection, None)
        if self.open_connections < self.max_connections:
            self._room.set()

    def _close_sockets(self) -> None:
        for sock in self.sockets:
            sock.close()
        self.sockets = []

    async def _accept(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self.open_connections >= self.max_connections:
                await self._make_room(sock)
                continue
            try:
                conn, _ = await loop.sock_accept(sock)
            except OSError as exc:
                if exc.errno not in _OUT_OF_RESOURCES:
                    continue  # ECONNABORTED and the like: that client is gone
                self.accept_errors.note(error=exc.strerror, open_connections=len(self._open))
                await asyncio.sleep(ACCEPT_RETRY)
                continue
            self._handshaking += 1
            task = asyncio.create_task(self._connect(conn))
            self._connecting.add(task)
            task.add_done_callback(self._connecting.discard)
            # sock_accept returns at once while connections wait: one per turn of the loop,
            # so a flood of them never holds the engine's steps back for a whole burst
            await asyncio.sleep(0)

    async def _make_room(self, sock: socket.socket) -> None:
        """At the cap: once a newcomer waits, close the oldest connection between requests
        for it and wait until it has closed. With every connection busy, look again every
        :data:`ROOM_POLL` seconds (a request that ends leaves its connection idle, not closed)
        until one closes or can be closed."""
        self._room.clear()
        loop = asyncio.get_running_loop()
        waiting = loop.create_future()
        loop.add_reader(sock.fileno(), _resolve, waiting)
        try:
            await waiting
        finally:
            loop.remove_reader(sock.fileno())
        while not self._room.is_set():
            oldest = next((c for c in self._open if c.between_requests), None)
            if oldest is not None:
                oldest.force_close()  # its connection_lost makes the room
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(ROOM_POLL):
                    await self._room.wait()

    async def _connect(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.connect_accepted_socket(
                self._protocol,
                conn,
                ssl=self.ssl_context,
                ssl_handshake_timeout=self.header_timeout if self.ssl_context else None,
            )
        except (TimeoutError, OSError, ssl.SSLError):
            conn.close()  # a failed handshake: the client is gone or not speaking TLS
        except asyncio.CancelledError:
            conn.close()
            raise
        finally:
            self._handshaking -= 1
            if self.open_connections < self.max_connections:
                self._room.set()

    def _protocol(self) -> _ApiConnection:
        return _ApiConnection(
            self.server,
            listener=self,
            loop=asyncio.get_running_loop(),
            keepalive_timeout=self.keepalive_timeout,
            access_log=None,
            max_line_size=MAX_LINE,
            max_field_size=MAX_LINE,
            # how long an unread body is drained after the answer (aiohttp's default 10 s)
            lingering_time=self.header_timeout,
        )
