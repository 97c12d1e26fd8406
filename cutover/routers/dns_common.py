"""What both DNS routers share: the spec fields of a DNS name, secrets, TSIG, and DNS errors.

* :class:`DnsSpecBase` validates ``zone``, ``record`` (inside the zone), ``ttl`` and the
  colors' addresses (IP addresses, canonical text, no duplicates, the same address families
  in both colors: see :mod:`cutover.core.dns_split`).
* :func:`load_secret` reads a TSIG secret or API key from a file or an environment variable
  when a router first needs it (preflight), so a missing secret refuses the start instead of
  breaking the daemon's config load. A secret never enters a message, a log or a ``repr``:
  errors name the file or variable, never its content, and every loaded secret is registered
  with the log redactor (the :class:`~cutover.resources.SecretSink` the router was handed).
  (``dns.tsig.Key``'s own ``repr`` prints the secret, so routers keep the key private and
  never format it.)
* :func:`exchange` sends one DNS message with a timeout and translates dnspython's and the
  socket's exceptions into :class:`~cutover.errors.TransientError` /
  :class:`~cutover.errors.PermanentError`: a timeout, a refused or reset connection is
  transient. A refusal of a signed message is returned as an answer even when the server did
  not sign it, so that its rcode and TSIG error reach :func:`rcode_error`.
* :func:`rcode_error` turns an answer's code into a message with the rcode, the TSIG error
  and every cause that fits on any server: BIND 9, Knot DNS and PowerDNS answer the same
  problem with different codes (the table is in its docstring).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import ipaddress
import os
import re
import socket
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Literal, NamedTuple

import dns.asyncquery
import dns.exception
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.tsig
from pydantic import ConfigDict, Field, field_validator, model_validator

from cutover.core.dns_split import canonical_address, family_mismatch
from cutover.errors import AdapterError, PermanentError, TransientError
from cutover.resources import SecretSink
from cutover.routers.base import RouterSpecBase

__all__ = [
    "DnsSpecBase",
    "KeyId",
    "ServerAddress",
    "TsigAlgorithm",
    "absolute_name",
    "exchange",
    "exchange_all",
    "load_secret",
    "parse_server",
    "rcode_error",
    "tsig_key",
]

TsigAlgorithm = Literal["hmac-sha256", "hmac-sha512"]
_ALGORITHMS: dict[str, dns.name.Name] = {
    "hmac-sha256": dns.tsig.HMAC_SHA256,
    "hmac-sha512": dns.tsig.HMAC_SHA512,
}
#: The secret in a key file: ``secret "<base64>";`` as BIND's ``tsig-keygen`` writes it, or
#: ``secret: <base64>`` as Knot DNS's ``keymgr -t`` writes it.
_KEY_FILE_SECRET = re.compile(
    r'secret\s+"(?P<bind>[^"]+)"\s*;|^\s*secret:\s*(?P<knot>\S+)\s*$', re.MULTILINE
)
_MAX_TTL = 2**31 - 1  # RFC 2181 section 8

#: ``(host, port)`` of a DNS server; the host is an IP address.
ServerAddress = tuple[str, int]


def absolute_name(value: str) -> str:
    """A DNS name as absolute text (``example.com`` -> ``example.com.``); ``ValueError`` if
    it is not a valid name."""
    text = value.strip()
    if not text or text == ".":
        raise ValueError("must be a DNS name like example.com.")
    try:
        return dns.name.from_text(text).to_text()
    except dns.exception.DNSException as exc:
        raise ValueError(f"is not a valid DNS name ({type(exc).__name__})") from exc


def parse_server(value: str, *, default_port: int = 53) -> ServerAddress:
    """``192.0.2.1``, ``192.0.2.1:5300``, ``::1`` or ``[::1]:5300`` -> ``(host, port)``.

    The host must be an IP address: dnspython sends to addresses, and resolving a name here
    would be a blocking call and a dependency on another DNS server."""
    hint = "must be an IP address with an optional port, e.g. 127.0.0.1:53 or [::1]:53"
    text = value.strip()
    host, port_text = text, ""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(hint)
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(hint) from None
    if port_text and not port_text.isdigit():
        raise ValueError(hint)
    port = int(port_text) if port_text else default_port
    if not 0 < port < 65536:
        raise ValueError("port must be 1..65535")
    return host, port


def load_secret(
    *, file: str | None, env: str | None, what: str, who: str, secrets: SecretSink
) -> str:
    """The secret from ``file`` (stripped) or the environment variable ``env``, added to
    ``secrets`` (the log redactor) so no log line can carry it.

    Raises :class:`PermanentError` naming the file or variable (never the content) when it
    cannot be read or is empty. A small file read at preflight: not worth a thread. Errors
    are raised ``from None``: a decoding error carries the file's bytes."""
    if file is not None:
        try:
            text = Path(file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise PermanentError(f"{who}: cannot read the {what} file {file}: {reason}") from None
        except UnicodeDecodeError:
            raise PermanentError(f"{who}: the {what} file {file} is not UTF-8 text") from None
        if not text:
            raise PermanentError(f"{who}: the {what} file {file} is empty")
        secrets.add(text)
        return text
    if env is not None:
        text = os.environ.get(env, "").strip()
        if not text:
            raise PermanentError(f"{who}: the environment variable {env} ({what}) is not set")
        secrets.add(text)
        return text
    raise PermanentError(f"{who}: no {what} configured")


def tsig_key(
    *,
    name: str,
    algorithm: TsigAlgorithm,
    secret: str,
    source: str,
    who: str,
    secrets: SecretSink,
) -> dns.tsig.Key:
    """A TSIG key from a base64 secret, or from a key file as BIND's ``tsig-keygen`` or Knot
    DNS's ``keymgr -t`` writes it.

    ``source`` names where the secret came from, for the error message."""
    match = _KEY_FILE_SECRET.search(secret)
    text = (match.group("bind") or match.group("knot")) if match else secret
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise PermanentError(
            f"{who}: the TSIG secret in {source} is not base64 (nor a BIND or Knot key file)"
        ) from None
    if not raw:
        raise PermanentError(f"{who}: the TSIG secret in {source} is empty")
    # the form dns.tsig.Key's repr prints, and the one inside a key file
    secrets.add(base64.b64encode(raw).decode())
    secrets.add(text)
    return dns.tsig.Key(name, raw, _ALGORITHMS[algorithm])


class KeyId(NamedTuple):
    """The TSIG key a message was signed with, as the config names it (never the secret)."""

    name: str
    algorithm: str


def rcode_error(
    answer: dns.message.Message, where: str, doing: str, *, zone: str, key: KeyId | None = None
) -> AdapterError:
    """The error for an answer whose code is not NOERROR (RFC 1035 4.1.1, RFC 2136 2.2,
    RFC 8945 5.3): the rcode, the TSIG error if the answer carries one, ``unsigned`` for an
    unsigned answer to a message signed with ``key``, then every cause that fits.

    Servers disagree on which code a refusal gets (observed; tests/integration/test_knot.py
    checks each):

    ============================  ===================  ===================  ===================
    cause                         BIND 9.18            Knot DNS 3.2         PowerDNS 4.7
    ============================  ===================  ===================  ===================
    key name/algorithm unknown    NOTAUTH + BADKEY     NOTAUTH + BADKEY     REFUSED, unsigned
    wrong secret                  NOTAUTH + BADSIG     NOTAUTH + BADSIG     REFUSED, unsigned
    policy/ACL denies the key     REFUSED              NOTAUTH + BADKEY     REFUSED
    zone not served               NOTAUTH              NOTAUTH, unsigned    NOTAUTH
    ============================  ===================  ===================  ===================

    so a message lists every cause its code can have on any of them, not one product's
    setting; only SERVFAIL is transient."""
    rcode = answer.rcode()
    text = dns.rcode.to_text(rcode)
    if rcode == dns.rcode.SERVFAIL:
        return TransientError(f"{where}: {doing}: {text} (server failure; may pass)")
    tsig_error = dns.rcode.Rcode.make(answer.tsig_error or 0) if answer.had_tsig else None
    if tsig_error:
        text += f", TSIG error {dns.rcode.to_text(tsig_error, tsig=True)}"
    elif key is not None and not answer.had_tsig:
        text += ", unsigned"
    causes = _causes(rcode, tsig_error, signed=answer.had_tsig, zone=zone, key=key)
    because = f": {'; or '.join(causes)}" if causes else ""
    return PermanentError(f"{where}: {doing}: {text}{because}")


def _causes(
    rcode: dns.rcode.Rcode,
    tsig_error: dns.rcode.Rcode | None,
    *,
    signed: bool,
    zone: str,
    key: KeyId | None,
) -> list[str]:
    """Every cause of ``rcode`` (and ``tsig_error``) that fits on any server, likeliest
    first (see the table in :func:`rcode_error`)."""
    not_served = f"the server does not serve zone {zone} as a primary"
    if key is None:  # an unsigned query (a read-back)
        if rcode == dns.rcode.REFUSED:
            return [not_served, "the server does not answer queries from this host"]
        return [not_served] if rcode == dns.rcode.NOTAUTH else list(_PLAIN_CAUSES.get(rcode, ()))
    name = repr(key.name)
    unknown = f"the server knows no TSIG key {name} with algorithm {key.algorithm}"
    secret = f"the secret of TSIG key {name} differs from the server's"
    denied = f"the update policy/ACL of zone {zone} does not allow key {name} (from this host)"
    if tsig_error == dns.rcode.BADKEY:
        return [unknown, denied]
    if tsig_error == dns.rcode.BADSIG:
        return [secret]
    if tsig_error == dns.rcode.BADTIME:
        return ["the clocks of this host and the server differ by more than 300 s (fix NTP)"]
    if tsig_error:
        return []
    if rcode == dns.rcode.NOTAUTH:
        # signed: the key was verified, so only the zone is left (RFC 2136 2.2)
        return [not_served] if signed else [not_served, unknown, secret]
    if rcode == dns.rcode.REFUSED:
        # signed: the key was verified; unsigned: the server did not say whether it was
        return [denied, not_served] if signed else [unknown, secret, denied, not_served]
    return list(_PLAIN_CAUSES.get(rcode, ()))


#: Causes of the answer codes that mean the same on every server (RFC 1035 4.1.1, RFC 2136 2.2).
_PLAIN_CAUSES: dict[int, tuple[str]] = {
    dns.rcode.NOTZONE: ("the name is not inside the zone",),
    dns.rcode.NOTIMP: ("the server does not implement it",),
    dns.rcode.FORMERR: ("the server could not parse the message",),
}


async def exchange(
    message: dns.message.Message,
    server: ServerAddress,
    *,
    within: float,
    who: str,
    key_name: str | None = None,
    udp: bool = False,
) -> dns.message.Message:
    """Send ``message`` (TCP unless ``udp``) and return the answer, whatever its rcode, or
    raise after ``within`` seconds (connect, send and receive together); every failure to
    get a verified answer becomes a Transient/PermanentError that names the router, the
    server and the TSIG key name, never the secret. A signed message's answer is verified
    with its key (dnspython raises on a bad or missing signature). Over UDP, a truncated
    answer (TC) is asked again over TCP: its answer section may lack addresses."""
    with _translated(server, who=who, key_name=key_name, within=within):
        async with asyncio.timeout(within):
            if udp:
                host, port = server
                answer, _ = await dns.asyncquery.udp_with_fallback(message, host, port=port)
                return answer
            (answer,) = await _tcp_exchange([message], server)
            return answer


async def exchange_all(
    queries: Sequence[dns.message.Message], server: ServerAddress, *, within: float, who: str
) -> list[dns.message.Message]:
    """The answers to unsigned ``queries``, in their order, asked on one TCP connection.

    The queries are pipelined (RFC 7766 6.2.1.1: sent without waiting for an answer; the
    server may answer them in any order, so each answer is matched to its query); one
    connection instead of one per query. A server that closes the connection before it
    answered them all (one answer per connection, as old servers do) is asked the rest on a
    connection each. ``within`` bounds it all; errors as :func:`exchange`."""
    with _translated(server, who=who, key_name=None, within=within):
        async with asyncio.timeout(within):
            return await _tcp_exchange(queries, server)


# TCP over the loop's socket calls rather than dns.asyncquery.tcp, which cannot do two things
# the routers need: pipeline several queries on one connection (exchange_all), and hand back
# a signed message's unsigned refusal so its rcode and TSIG error reach the operator
# (_answer; dnspython raises and the reason is lost). It also takes less CPU a query, which
# every DNS rollback pays (docs/performance.md). dnspython still builds, signs, parses and
# verifies the messages.


def _socket(host: str, kind: socket.SocketKind) -> socket.socket:
    family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    sock = socket.socket(family, kind)
    sock.setblocking(False)
    return sock


async def _tcp_exchange(
    messages: Sequence[dns.message.Message], server: ServerAddress
) -> list[dns.message.Message]:
    loop = asyncio.get_running_loop()
    answers: dict[int, dns.message.Message] = {}  # by the message's index
    # each message with its two-byte length (RFC 1035 4.2.2), all in one write (which signs
    # a signed message and so sets the MAC its answer is verified against)
    data = b"".join(m.to_wire(prepend_length=True) for m in messages)
    with _socket(server[0], socket.SOCK_STREAM) as sock:
        await loop.sock_connect(sock, server)
        await loop.sock_sendall(sock, data)
        buffer = bytearray()
        with contextlib.suppress(EOFError):  # closed early: the rest one by one below
            while len(answers) < len(messages):
                size = int.from_bytes(await _take(loop, sock, buffer, 2), "big")
                wire = await _take(loop, sock, buffer, size)
                index = _match(messages, wire, answers) if len(messages) > 1 else 0
                answers[index] = _answer(wire, messages[index])
    if not answers:
        raise EOFError("the server closed the connection without answering")
    rest = [i for i in range(len(messages)) if i not in answers]
    again = await asyncio.gather(*(_tcp_exchange([messages[i]], server) for i in rest))
    answers.update((i, answer) for i, (answer,) in zip(rest, again, strict=True))
    return [answers[i] for i in range(len(messages))]


async def _take(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, buffer: bytearray, n: int
) -> bytes:
    """The next ``n`` bytes of the stream (EOFError if it ends first)."""
    while len(buffer) < n:
        chunk = await loop.sock_recv(sock, 65535)
        if not chunk:
            raise EOFError("the server closed the connection")
        buffer += chunk
    taken = bytes(buffer[:n])
    del buffer[:n]
    return taken


def _match(
    messages: Sequence[dns.message.Message],
    wire: bytes,
    answered: Mapping[int, dns.message.Message],
) -> int:
    """Which of the pipelined ``messages`` the answer ``wire`` is to, by its id and question
    (the server may answer them in any order)."""
    head = dns.message.from_wire(wire, question_only=True)
    for i, message in enumerate(messages):
        if i not in answered and message.is_response(head):
            return i
    raise dns.query.BadResponse


def _answer(wire: bytes, message: dns.message.Message) -> dns.message.Message:
    """The answer to ``message``, verified with its TSIG key when it was signed.

    A signed message's *refusal* is returned unverified: servers answer a TSIG problem with
    NOTAUTH and a TSIG error but no MAC (RFC 8945 5.3.2), or refuse without signing at all
    (Knot DNS for a zone it does not serve, PowerDNS for a key it cannot use), and the
    rcode and TSIG error are what tells the operator why (:func:`rcode_error`). It is only
    ever read as a failure; a success must verify."""
    try:
        answer = dns.message.from_wire(wire, keyring=message.keyring, request_mac=message.mac)
    except (dns.tsig.PeerError, dns.exception.FormError):
        if message.keyring is None:
            raise
        answer = dns.message.from_wire(wire, keyring=False)
        if answer.rcode() == dns.rcode.NOERROR:
            raise
    if not message.is_response(answer):
        raise dns.query.BadResponse
    return answer


@contextlib.contextmanager
def _translated(
    server: ServerAddress, *, who: str, key_name: str | None, within: float
) -> Iterator[None]:
    """dnspython's and the socket's exceptions as Transient/PermanentErrors (module docstring)."""
    host, port = server
    where = f"{who}: DNS server {host}:{port}"
    key = f"TSIG key {key_name!r}"
    try:
        yield
    except (
        dns.tsig.PeerError,
        dns.tsig.BadSignature,
        dns.tsig.BadTime,
        dns.message.UnknownTSIGKey,
    ) as exc:
        # a refusal comes back as an answer (_answer); this is a success that does not verify
        raise PermanentError(
            f"{where}: its answer failed verification with {key} ({type(exc).__name__})"
        ) from exc
    except dns.exception.FormError as exc:
        if key_name is not None and "TSIG" in str(exc):
            # an unsigned success (or a broken TSIG record): nothing proves the server sent it
            raise PermanentError(
                f"{where}: its answer to the message signed with {key} does not verify ({exc})"
            ) from exc
        raise TransientError(f"{where}: malformed answer ({exc})") from exc
    except (dns.exception.Timeout, TimeoutError) as exc:
        raise TransientError(f"{where}: no answer within {within:g}s") from exc
    except ConnectionRefusedError as exc:
        raise TransientError(f"{where}: connection refused (is it running?)") from exc
    except (OSError, EOFError) as exc:
        raise TransientError(f"{where}: {type(exc).__name__}: {exc}") from exc
    except dns.exception.DNSException as exc:
        raise TransientError(f"{where}: {type(exc).__name__}: {exc}") from exc


class DnsSpecBase(RouterSpecBase):
    """Fields of every DNS router: the name, its TTL, and each color's addresses.

    ``ttl`` is the config key; the field is ``ttl_seconds`` because
    :attr:`RouterSpecBase.ttl` is the property the config reads for every router (``None``
    for load balancers)."""

    model_config = ConfigDict(extra="forbid", frozen=True, serialize_by_alias=True)

    zone: str
    record: str
    ttl_seconds: int = Field(alias="ttl", ge=1, le=_MAX_TTL)

    @property
    def ttl(self) -> int:
        return self.ttl_seconds

    @field_validator("zone", "record")
    @classmethod
    def _check_name(cls, value: str) -> str:
        return absolute_name(value)

    @field_validator("blue", "green")
    @classmethod
    def _check_addresses(cls, values: list[str]) -> list[str]:
        out = []
        for value in values:
            try:
                out.append(canonical_address(value))
            except ValueError:
                raise ValueError(f"{value[:60]!r} is not an IPv4 or IPv6 address") from None
        dupes = sorted({a for a in out if out.count(a) > 1})
        if dupes:
            raise ValueError(f"lists address(es) twice: {', '.join(dupes)}")
        return out

    @model_validator(mode="after")
    def _check_dns(self) -> DnsSpecBase:
        if not dns.name.from_text(self.record).is_subdomain(dns.name.from_text(self.zone)):
            raise ValueError(f"record {self.record} is not inside zone {self.zone}")
        both = sorted(set(self.blue) & set(self.green))
        if both:
            raise ValueError(f"address(es) in both blue and green: {', '.join(both)}")
        mismatch = family_mismatch(self.blue, self.green)
        if mismatch:
            raise ValueError(mismatch)
        return self

    def claims(self) -> set[str]:
        return {f"dns:{self.record.lower()}"}
