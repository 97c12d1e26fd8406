"""A lean HTTP/1.1 client for the common case of an HTTP health check.

Why it exists: at 1000 checks every 5 s, aiohttp's client cost ~180 µs of CPU per request
(request and response objects, multidicts, a stream reader, timers, connection-pool
bookkeeping), about a third of the daemon's CPU budget. A health check needs far less: one
keep-alive connection per check (a check has at most one request in flight, so no pool), a
request built once and sent with one ``transport.write``, and a parser that learns the status,
the body framing and at most :data:`~cutover.checks.http.BODY_LIMIT` bytes of body.

:func:`fast_client` says whether a check may use it: plain ``http://``, no user:password in the
URL, and no header that changes what the answer looks like or how it is framed
(``Accept-Encoding``, ``Transfer-Encoding``, ``Content-Length``, ``Expect``, ``Upgrade``) and
no control character in a header (aiohttp refuses those; it should say so, not us). Everything
else stays on aiohttp, and so does an answer aiohttp would not take as it is: a redirect it
would follow, or a compressed body it would decode when the body is judged
(:attr:`Answer.redo`). The request is the one aiohttp would send (same target, ``Host``,
``Accept`` and ``User-Agent``: a server sees no difference between the paths), except
``Accept-Encoding: identity`` and an explicit ``Connection: keep-alive``.

:meth:`Http1Client.ask` takes a deadline; whatever interrupts an answer (the deadline, a
cancel, a malformed answer) closes the connection, so a half-read answer is never mistaken for
the next one. A connection closed or reset before a whole answer head is tried once more on a
new connection, as aiohttp does for GET and HEAD: typically a kept-alive connection the server
timed out just as the request went out.

Name resolution is ``loop.create_connection``'s: ``getaddrinfo`` in the default executor, only
when a connection is opened (an IP literal is not resolved at all), with happy eyeballs as
aiohttp's connector does, but without aiohttp's 10 s DNS cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
from collections.abc import Mapping
from typing import Final, NamedTuple

from aiohttp.http import SERVER_SOFTWARE
from yarl import URL

__all__ = [
    "HEAD_LIMIT",
    "Answer",
    "ConnectError",
    "Http1Client",
    "Http1Error",
    "MalformedAnswer",
    "ServerDisconnected",
    "fast_client",
]

#: An answer's status line and headers (each interim answer's too) may take at most this much.
HEAD_LIMIT: Final = 64 * 1024

#: aiohttp follows these (with a ``Location`` or ``URI`` header) for GET and HEAD.
REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})

#: Request headers that send a check to aiohttp: they change the answer's encoding or framing.
_AIOHTTP_HEADERS: Final = frozenset(
    {"accept-encoding", "transfer-encoding", "content-length", "expect", "upgrade"}
)
#: What aiohttp refuses in a header (``http_writer._FORBIDDEN_HEADER_CHARS_RE``).
_FORBIDDEN: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
#: An answer's status line: HTTP/1.x, three digits, then the reason (or nothing).
_STATUS: Final = re.compile(rb"HTTP/1\.([01]) (\d\d\d)(?: [^\r\n]*)?\r?(?=\n|$)")
#: The headers read here, in a lowercased head (never those of a folded line).
_FIELDS: Final = re.compile(
    rb"\n(content-length|transfer-encoding|connection|location|uri|content-encoding)"
    rb"[ \t]*:([^\r\n]*)"
)
#: Header lines, each with a colon (or starting with a blank: folded into the one above).
_HEADER_LINES: Final = re.compile(rb"(?:\n(?:[^:\r\n]+:|[ \t])[^\n]*)*")
_HEADER_LINE: Final = re.compile(rb"(?:[^:\r\n]+:|[ \t])[^\n]*")
_HEX_SIZE: Final = re.compile(rb"[0-9a-fA-F]+")
#: What an answer's head may hold: deleted from it, any control character is left.
_HEAD_BYTES: Final = bytes(range(0x20, 0x7F)) + b"\t\r\n" + bytes(range(0x80, 0x100))

# parser states
_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILER, _UNTIL_CLOSE, _IDLE, _CLOSED = (
    range(9)
)


class Http1Error(Exception):
    """No usable answer; ``str()`` is a short human reason (see ``net.no_answer_reason``)."""


class ConnectError(Http1Error):
    """The connection could not be opened (``os_error`` says why)."""

    def __init__(self, os_error: OSError) -> None:
        super().__init__(str(os_error))
        self.os_error = os_error


class ServerDisconnected(Http1Error):
    """The server closed the connection (or reset it) before the answer was complete."""


class MalformedAnswer(Http1Error):
    """What came back is not an HTTP/1.x answer this client understands."""

    def __init__(self, what: str) -> None:
        super().__init__(f"malformed HTTP answer: {what}")


class _Retry(ServerDisconnected):
    """The connection closed before a whole answer head: worth one more try."""


class Answer(NamedTuple):
    status: int
    #: At most the client's ``limit`` bytes, and only when it was asked to read the body.
    body: bytes
    #: aiohttp would not judge this answer as it is (it follows a redirect, it decodes a
    #: compressed body): ask again through aiohttp.
    redo: bool


def fast_client(
    url: str, method: str, headers: Mapping[str, str], *, read_body: bool, limit: int
) -> Http1Client | None:
    """A client for ``url`` when the lean path gives the same answer as aiohttp, else None."""
    try:
        parsed = URL(url)
    except (TypeError, ValueError):
        return None
    host, authority = parsed.raw_host, parsed.host_port_subcomponent
    if (
        parsed.scheme != "http"
        or parsed.user is not None
        or parsed.password is not None
        or not host
        or not authority
        or parsed.port is None
    ):
        return None
    names = {name.lower() for name in headers}
    if names & _AIOHTTP_HEADERS or any(
        _FORBIDDEN.search(k) or _FORBIDDEN.search(v) for k, v in headers.items()
    ):
        return None
    # aiohttp's order: Host, the user's headers, then the defaults they did not set
    lines = [f"{method} {parsed.raw_path_qs} HTTP/1.1"]
    if "host" not in names:
        lines.append(f"Host: {authority}")
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if "accept" not in names:
        lines.append("Accept: */*")
    lines.append("Accept-Encoding: identity")
    if "user-agent" not in names:
        lines.append(f"User-Agent: {SERVER_SOFTWARE}")
    if "connection" not in names:
        lines.append("Connection: keep-alive")
    keep = not any(
        k.lower() == "connection" and b"close" in _tokens(v.encode()) for k, v in headers.items()
    )
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    return Http1Client(
        host=host,
        port=parsed.port,
        request=request,
        head=method == "HEAD",
        read_body=read_body,
        keep=keep,
        limit=limit,
    )


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _tokens(value: bytes) -> set[bytes]:
    return {t.strip().lower() for t in value.split(b",")}


class Http1Client:
    """At most one keep-alive connection to one origin, one request at a time."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        request: bytes,
        head: bool,
        read_body: bool,
        keep: bool,
        limit: int,
    ) -> None:
        self.host = host
        self.port = port
        self.request = request
        self.head = head
        self.read_body = read_body
        self.keep = keep
        self.limit = limit
        # aiohttp's connector races addresses 250 ms apart; an IP literal has one address only
        self._happy_eyeballs_delay = None if _is_ip(host) else 0.25
        self._conn: _Connection | None = None
        self.busy = False  # a request is in flight: another caller must go elsewhere

    async def ask(self, deadline: float) -> Answer:
        """One request and its answer by ``deadline`` (on ``loop.time()``'s clock).

        Raises :class:`TimeoutError` when the deadline passes, :class:`Http1Error` when there
        is no (usable) answer."""
        loop = asyncio.get_running_loop()
        self.busy = True
        try:
            retry = True
            while True:
                conn = self._conn
                if conn is None or not conn.reusable(loop):
                    if conn is not None:
                        conn.close()
                    self._conn = None
                    async with asyncio.timeout_at(deadline):
                        conn = await self._connect(loop)
                    self._conn = conn
                # a timer on the answer, not asyncio.timeout(): that costs 7 µs and a cancel
                waiter: asyncio.Future[Answer] = loop.create_future()
                timer = loop.call_at(deadline, _expire, waiter)
                conn.send(waiter)
                try:
                    return await waiter
                except _Retry:
                    # closed or reset before a whole answer head: a reused connection the
                    # server had just timed out, say. Once more on a new one, as aiohttp does
                    # (GET and HEAD are idempotent).
                    self._conn = None
                    if not retry:
                        raise
                    retry = False
                except BaseException:  # the deadline, a cancel, a bad answer: never reuse it
                    conn.close()
                    raise
                finally:
                    timer.cancel()
        finally:
            self.busy = False

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> _Connection:
        try:
            _, conn = await loop.create_connection(
                lambda: _Connection(self),
                self.host,
                self.port,
                happy_eyeballs_delay=self._happy_eyeballs_delay,
            )
        except OSError as exc:
            raise ConnectError(exc) from exc
        return conn

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


def _expire(waiter: asyncio.Future[Answer]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class _Connection(asyncio.Protocol):
    """One connection and the parser of its answers (fed by ``data_received``)."""

    def __init__(self, client: Http1Client) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()
        self.buf = bytearray()
        self.state = _IDLE
        self.waiter: asyncio.Future[Answer] | None = None
        self.status = 0
        self.keep = False
        self.redo = False
        self.remaining = 0
        self.body: bytearray | None = None  # collected body, when the body is judged
        self.drained = 0  # bytes of a body read past, when it is not

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.state == _IDLE:  # unasked-for bytes (a 408 before closing, say): not reusable
            self.close()
            return
        if self.state == _CLOSED:
            return
        self.buf += data
        try:
            self._advance()
        except MalformedAnswer as exc:
            self._fail(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        state, self.state = self.state, _CLOSED
        if state == _UNTIL_CLOSE:  # the body's end
            self._answer()
        elif state == _HEAD:
            self._fail(_Retry("server closed the connection"))
        elif state in (_IDLE, _CLOSED):
            self._fail(ServerDisconnected("server closed the connection"))
        else:
            self._fail(ServerDisconnected("server closed the connection in the middle of the body"))

    # the client's side

    def reusable(self, loop: asyncio.AbstractEventLoop) -> bool:
        return (
            self.state == _IDLE
            and self.loop is loop
            and self.transport is not None
            and not self.transport.is_closing()
        )

    def send(self, waiter: asyncio.Future[Answer]) -> None:
        """Send the request; its answer (or why there is none) goes to ``waiter``."""
        assert self.transport is not None and self.state == _IDLE
        self.waiter, self.state = waiter, _HEAD
        self.transport.write(self.client.request)

    def close(self) -> None:
        if self.state != _CLOSED:
            self.state = _CLOSED
            self._fail(ServerDisconnected("connection closed"))
        transport = self.transport
        if transport is not None and not transport.is_closing():
            with contextlib.suppress(RuntimeError):  # its loop is closed already
                transport.close()

    # parsing

    def _advance(self) -> None:
        buf = self.buf
        while True:
            state = self.state
            if state == _HEAD:
                end, skip = buf.find(b"\r\n\r\n"), 4
                bare = buf.find(b"\n\n", 0, end) if end >= 0 else buf.find(b"\n\n")
                if bare >= 0:  # bare LF line ends, which aiohttp takes too
                    end, skip = bare, 2
                if end < 0 or end > HEAD_LIMIT:
                    if end > HEAD_LIMIT or len(buf) > HEAD_LIMIT:
                        raise MalformedAnswer(f"head over {HEAD_LIMIT // 1024} KiB")
                    return
                head = bytes(buf[:end])
                del buf[: end + skip]
                self._head(head)
            elif state == _LENGTH:
                if not buf:
                    return
                take = min(self.remaining, len(buf))
                self.remaining -= take
                self._consume(take, done=self.remaining == 0)
            elif state == _CHUNK_SIZE:
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > 4096:
                        raise MalformedAnswer("chunk size line too long")
                    return
                size = bytes(buf[:end]).split(b";", 1)[0].strip(b" \t")
                if not _HEX_SIZE.fullmatch(size):
                    raise MalformedAnswer(f"chunk size {size[:20]!r}")
                del buf[: end + 2]
                self.remaining = int(size, 16)
                self.state = _CHUNK_DATA if self.remaining else _TRAILER
            elif state == _CHUNK_DATA:
                if not buf:
                    return
                take = min(self.remaining, len(buf))
                self.remaining -= take
                if self.remaining == 0:
                    self.state = _CHUNK_END
                self._consume(take, done=False)
            elif state == _CHUNK_END:
                if len(buf) < 2:
                    return
                if buf[:2] != b"\r\n":
                    raise MalformedAnswer("chunk not followed by CRLF")
                del buf[:2]
                self.state = _CHUNK_SIZE
            elif state == _TRAILER:
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > HEAD_LIMIT:
                        raise MalformedAnswer(f"trailers over {HEAD_LIMIT // 1024} KiB")
                    return
                del buf[: end + 2]
                if end == 0:
                    self._done()
            elif state == _UNTIL_CLOSE:
                if buf:
                    self._consume(len(buf), done=False)
                return
            else:  # _IDLE or _CLOSED: an answer ended
                if buf and state == _IDLE:
                    self.close()  # more than was asked for: do not reuse
                return

    def _head(self, head: bytes) -> None:
        # regular expressions over the whole head, not a Python loop over its lines: the
        # parse was most of this client's CPU
        status_line = _STATUS.match(head)
        if status_line is None:
            first = head.partition(b"\n")[0].rstrip()
            raise MalformedAnswer(f"status line {first[:60]!r}")
        status = int(status_line[2])
        if 100 <= status < 200 and status != 101:
            return  # an interim answer (100 Continue, 103 Early Hints): the real one follows
        if head.translate(None, _HEAD_BYTES):
            raise MalformedAnswer("control character in the head")
        headers = status_line.end()  # at the status line's LF, if there are headers
        if not _HEADER_LINES.fullmatch(head, headers):
            bad = next(
                (
                    line
                    for line in head[headers + 1 :].split(b"\n")
                    if not _HEADER_LINE.fullmatch(line)
                ),
                b"",
            )
            raise MalformedAnswer(f"header line {bad.rstrip()[:60]!r}")
        length: bytes | None = None
        chunked = has_te = has_location = False
        connection: set[bytes] = set()
        encoding = b""
        for name, value in _FIELDS.findall(head.lower(), headers):
            if name == b"content-length":
                value = value.strip()
                if length is not None:
                    raise MalformedAnswer("more than one Content-Length")
                if not value.isdigit():
                    raise MalformedAnswer(f"Content-Length {value[:20]!r}")
                length = value
            elif name == b"transfer-encoding":
                has_te = True
                chunked = value.rsplit(b",", 1)[-1].strip() == b"chunked"
            elif name == b"connection":
                connection |= _tokens(value)
            elif name == b"content-encoding":
                encoding = value.strip()
            else:  # location, uri
                has_location = True
        if has_te and length is not None:
            raise MalformedAnswer("both Transfer-Encoding and Content-Length")

        client = self.client
        http11 = status_line[1] == b"1"
        self.status = status
        self.keep = client.keep and (
            b"close" not in connection if http11 else b"keep-alive" in connection
        )
        self.redo = (status in REDIRECTS and has_location) or (
            client.read_body and encoding not in (b"", b"identity")
        )
        self.body = bytearray() if client.read_body and not self.redo else None
        self.drained = 0
        if client.head or status in (101, 204, 304):
            self.keep = self.keep and status != 101
            self._done()
            return
        if chunked:
            self.state = _CHUNK_SIZE
            self.remaining = 0
        elif length is not None:
            self.remaining = int(length)
            self.state = _LENGTH
            if self.remaining == 0:
                self._done()
                return
        else:
            self.state = _UNTIL_CLOSE
            self.keep = False
        if self.body is None:  # the status is the answer; the body is read past (or not)
            self._answer()
            if self.state == _UNTIL_CLOSE or self.remaining > client.limit or not self.keep:
                self.close()

    def _consume(self, n: int, *, done: bool) -> None:
        """``n`` bytes at the front of the buffer are body."""
        body, limit = self.body, self.client.limit
        if body is not None:
            room = limit - len(body)
            body += self.buf[: min(n, room)]
            del self.buf[:n]
            if n >= room and not (done and n == room):  # full, and more is (or may be) coming
                self._answer()
                self.close()
                return
        else:
            del self.buf[:n]
            self.drained += n
            if self.drained > limit:  # not worth reading past: a new connection is cheaper
                self.close()
                return
        if done:
            self._done()

    def _done(self) -> None:
        """The answer is complete."""
        self._answer()
        self.state = _IDLE
        if not self.keep:
            self.close()

    def _answer(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            body = b"" if self.body is None else bytes(self.body)
            waiter.set_result(Answer(self.status, body, self.redo))
        self.waiter = None

    def _fail(self, exc: Http1Error) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        self.waiter = None
        if not isinstance(exc, ServerDisconnected):
            self.close()
