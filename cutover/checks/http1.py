"""A lean HTTP/1.1 client for the common case of an HTTP health check.

Why it exists: aiohttp's ``ClientSession`` spends most of its CPU per request on what a health
check does not need: request and response objects, cookie and redirect handling, timers and
connection-pool bookkeeping (docs/performance.md, "HTTP checks", has the numbers). A health
check needs one keep-alive connection (a check has at most one request in flight, so no pool)
and a request built once and sent with one ``transport.write``.

The answer is parsed by aiohttp's own connection protocol (``ResponseHandler``, with the llhttp
parser aiohttp's client uses, the same settings), so a malformed answer gets the verdict it gets
through aiohttp: a health check judges what came back as strictly as a kept parser does.

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
import ipaddress
import re
from collections.abc import Mapping
from typing import Final, NamedTuple

from aiohttp import ClientOSError, ClientPayloadError, ServerDisconnectedError
from aiohttp.client_proto import ResponseHandler
from aiohttp.http import SERVER_SOFTWARE, HttpProcessingError, RawResponseMessage
from aiohttp.streams import StreamReader
from yarl import URL

__all__ = [
    "Answer",
    "ConnectError",
    "Http1Client",
    "Http1Error",
    "MalformedAnswer",
    "fast_client",
]

#: aiohttp follows these (with a ``Location`` or ``URI`` header) for GET and HEAD.
REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})

#: Request headers that send a check to aiohttp: they change the answer's encoding or framing.
_AIOHTTP_HEADERS: Final = frozenset(
    {"accept-encoding", "transfer-encoding", "content-length", "expect", "upgrade"}
)
#: What aiohttp refuses in a header (``http_writer._FORBIDDEN_HEADER_CHARS_RE``).
_FORBIDDEN: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class Http1Error(Exception):
    """No usable answer; ``str()`` is a short human reason (see ``net.no_answer_reason``)."""


class ConnectError(Http1Error):
    """The connection could not be opened (``os_error`` says why)."""

    def __init__(self, os_error: OSError) -> None:
        super().__init__(str(os_error))
        self.os_error = os_error


class MalformedAnswer(Http1Error):
    """What came back is not an HTTP/1.x answer: aiohttp's parser refused it."""

    def __init__(self, error: HttpProcessingError) -> None:
        # the parser's message spans lines, the last points at the offending byte: one line
        lines = (line.strip() for line in error.message.splitlines())
        super().__init__(
            "malformed HTTP answer: " + " ".join(line for line in lines if line not in ("", "^"))
        )


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
        self._conn: ResponseHandler | None = None
        self.busy = False  # a request is in flight: another caller must go elsewhere

    async def ask(self, deadline: float) -> Answer:
        """One request and its answer by ``deadline`` (on ``loop.time()``'s clock).

        Raises :class:`TimeoutError` when the deadline passes, :class:`Http1Error` or
        :class:`aiohttp.ClientError` when there is no (usable) answer."""
        self.busy = True
        try:
            async with asyncio.timeout_at(deadline):
                return await self._ask()
        finally:
            self.busy = False

    async def _ask(self) -> Answer:
        conn, self._conn = self._conn, None
        if conn is not None and (conn.should_close or not conn.is_connected()):
            conn.close()
            conn = None
        # closed or reset before a whole answer head (a kept-alive connection the server timed
        # out just as the request went out, say): once more on a new one, as aiohttp does (GET
        # and HEAD are idempotent)
        retry = True
        while True:
            if conn is None:
                conn = await self._connect()
            try:
                assert conn.transport is not None
                conn.transport.write(self.request)
                message, payload = await self._answer_head(conn)
            except (ServerDisconnectedError, ClientOSError):
                conn.close()
                conn = None
                if not retry:
                    raise
                retry = False
                continue
            except BaseException:  # the deadline, a cancel, a bad answer: never reuse it
                conn.close()
                raise
            try:
                answer, keep = await self._finish(message, payload)
            except BaseException:
                conn.close()
                raise
            if keep:
                self._conn = conn  # the next ask closes it if the rest of the body did not come
            else:
                conn.close()
            return answer

    @staticmethod
    async def _answer_head(conn: ResponseHandler) -> tuple[RawResponseMessage, StreamReader]:
        """The final answer's head and its body stream; interim answers (100 Continue, 103
        Early Hints) are passed over, as aiohttp does."""
        while True:
            try:
                message, payload = await conn.read()
            except HttpProcessingError as exc:
                raise MalformedAnswer(exc) from exc
            if not 100 <= message.code < 200 or message.code == 101:
                return message, payload

    async def _finish(
        self, message: RawResponseMessage, payload: StreamReader
    ) -> tuple[Answer, bool]:
        """The answer, and whether its connection may serve the next one."""
        headers = message.headers
        encoding = headers.get("Content-Encoding", "").strip().lower()
        redo = (message.code in REDIRECTS and ("Location" in headers or "URI" in headers)) or (
            self.read_body and encoding not in ("", "identity")
        )
        body = b""
        if self.read_body and not redo:
            try:
                while len(body) < self.limit and not payload.at_eof():
                    body += await payload.read(self.limit - len(body))
            except ClientPayloadError as exc:  # cut short, or a chunk aiohttp's parser refused
                cause = exc.__cause__
                if not isinstance(cause, HttpProcessingError):
                    raise
                raise MalformedAnswer(cause) from exc
            whole = payload.at_eof()
        else:
            # the status is the answer: a short rest of the body still coming is left to
            # arrive, a long or unbounded one is not worth it (a new connection is cheaper)
            length = headers.get("Content-Length", "")
            whole = payload.is_eof() or (
                not message.chunked and length.isdigit() and int(length) <= self.limit
            )
        keep = self.keep and not message.should_close and whole
        return Answer(message.code, body, redo), keep

    async def _connect(self) -> ResponseHandler:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(
                lambda: ResponseHandler(loop),
                self.host,
                self.port,
                happy_eyeballs_delay=self._happy_eyeballs_delay,
            )
        except OSError as exc:
            raise ConnectError(exc) from exc
        # aiohttp's client settings; the parser goes on from one answer to the next
        conn.set_response_params(skip_payload=self.head, read_until_eof=True, auto_decompress=False)
        return conn

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
