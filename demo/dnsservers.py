"""Real DNS servers for the tests and benchmarks: BIND 9 and PowerDNS as children on loopback.

Helpers, not fixtures (like :mod:`demo.stack`, whose ``Child``, ``free_port``,
``require_binary`` and ``make_workdir`` they reuse). Each server runs in the foreground as a
child of this process (``named -g``; ``pdns_server`` with ``daemon=no guardian=no``), keeps
every file in its own temp dir, listens on free 127.0.0.1 ports only, and is stopped by its
PID. The configs, readiness probes and pitfalls follow recipes/dns-servers.md:

* readiness is a DNS query over **TCP** (a UDP probe sent too early is lost silently);
* BIND binds with SO_REUSEPORT, so a stale server on the same port would answer in silence:
  :func:`assert_port_unused` refuses to start on a port someone listens on;
* ``session-keyfile`` and ``controls { };`` keep BIND out of ``/run/named`` and port 953;
* ``security-poll-suffix=`` keeps PowerDNS from querying the system resolver;
* SIGTERM stops named with 0 and pdns_server with -15; both count as clean.

A missing binary raises :class:`~demo.stack.MissingBinary`, which fails a test, never skips it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import secrets
import shutil
import socket
import sqlite3
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import dns.asyncquery
import dns.exception
import dns.message
import dns.rcode

from demo.stack import LOOPBACK, Child, MissingBinary, free_port, require_binary

__all__ = [
    "PDNS_SCHEMA",
    "Bind",
    "PowerDNS",
    "TsigKey",
    "assert_port_unused",
    "find_binary",
    "free_dns_port",
    "new_tsig_key",
    "wait_dns",
]

PDNS_SCHEMA = Path("/usr/share/pdns-backend-sqlite3/schema/schema.sqlite3.sql")
_SBIN = ("/usr/sbin", "/usr/local/sbin", "/sbin")


@dataclass(frozen=True)
class TsigKey:
    """A TSIG key for a test server; the secret stays out of ``repr``."""

    name: str
    secret: str = field(repr=False)
    algorithm: str = "hmac-sha256"


def new_tsig_key(name: str = "cutover-key.", algorithm: str = "hmac-sha256") -> TsigKey:
    """A fresh random key (32 bytes, base64), as ``tsig-keygen`` would make."""
    return TsigKey(name, base64.b64encode(secrets.token_bytes(32)).decode(), algorithm)


def find_binary(name: str) -> str:
    """``name`` on PATH or in an sbin dir (servers live in /usr/sbin, which a non-root PATH
    often lacks); else :class:`MissingBinary` with the install hint."""
    path = shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), *_SBIN]))
    return path if path is not None else require_binary(name)


def free_dns_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1 (DNS listens on both)."""
    while True:
        port = free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            try:
                udp.bind((LOOPBACK, port))
            except OSError:
                continue
            return port


def assert_port_unused(port: int) -> None:
    """Refuse a port someone already listens on (BIND would share it via SO_REUSEPORT)."""
    with socket.socket() as s:
        if s.connect_ex((LOOPBACK, port)) == 0:
            raise RuntimeError(f"something already listens on {LOOPBACK}:{port}")


async def wait_dns(child: Child, port: int, zone: str | None = None, within: float = 15.0) -> float:
    """Poll a SOA query over TCP until the server answers (with ``zone``: NOERROR with an
    answer; without: any answer, REFUSED included); returns the seconds taken."""
    query = dns.message.make_query(zone or ".", "SOA")
    t0 = time.monotonic()
    while time.monotonic() - t0 < within:
        if child.proc.returncode is not None:
            raise RuntimeError(
                f"{child.name} exited with {child.proc.returncode}:\n{child.log()[-3000:]}"
            )
        with contextlib.suppress(OSError, EOFError, dns.exception.DNSException):
            answer = await dns.asyncquery.tcp(query, LOOPBACK, port=port, timeout=0.5)
            if zone is None or (answer.rcode() == dns.rcode.NOERROR and answer.answer):
                return time.monotonic() - t0
        await asyncio.sleep(0.02)
    log = child.log()[-3000:]
    raise TimeoutError(f"{child.name} on port {port} not ready in {within}s:\n{log}")


class Bind:
    """BIND 9 ``named -g`` serving one primary zone that takes updates signed with ``key``."""

    def __init__(self, child: Child, *, workdir: Path, port: int, zone: str, key: TsigKey) -> None:
        self.child = child
        self.workdir = workdir
        self.port = port
        self.zone = zone
        self.key = key

    @property
    def server(self) -> str:
        """``host:port``, as a router's ``server:`` key wants it."""
        return f"{LOOPBACK}:{self.port}"

    @classmethod
    async def start(
        cls,
        workdir: Path,
        *,
        zone: str = "example.test.",
        records: Sequence[str] = (),
        key: TsigKey | None = None,
        port: int | None = None,
    ) -> Bind:
        """``records``: zone-file lines relative to the zone (``www 300 IN A 192.0.2.10``)."""
        binary = find_binary("named")
        key = key or new_tsig_key()
        port = port or free_dns_port()
        (workdir / "tsig.key").write_text(
            f'key "{key.name}" {{ algorithm {key.algorithm}; secret "{key.secret}"; }};\n'
        )
        (workdir / "named.conf").write_text(
            f'include "{workdir}/tsig.key";\n'
            f'options {{ directory "{workdir}"; pid-file "{workdir}/named.pid";\n'
            f'    session-keyfile "{workdir}/session.key";\n'
            f"    listen-on port {port} {{ {LOOPBACK}; }}; listen-on-v6 {{ none; }};\n"
            "    recursion no; dnssec-validation no; notify no; allow-transfer { none; }; };\n"
            "controls { };\n"
            f'zone "{zone}" {{ type primary; file "{workdir}/zone.db";\n'
            f'    allow-update {{ key "{key.name}"; }}; }};\n'
        )
        lines = [
            "$TTL 60",
            f"@ IN SOA ns1.{zone} hostmaster.{zone} 1 3600 600 86400 60",
            f"  IN NS ns1.{zone}",
            f"ns1 IN A {LOOPBACK}",
            *records,
        ]
        (workdir / "zone.db").write_text("\n".join(lines) + "\n")
        assert_port_unused(port)
        argv = [binary, "-g", "-c", str(workdir / "named.conf")]
        child = await Child.spawn("named", argv, workdir)
        bind = cls(child, workdir=workdir, port=port, zone=zone, key=key)
        try:
            await wait_dns(child, port, zone)
        except BaseException:
            await bind.stop()
            raise
        return bind

    def log(self) -> str:
        return self.child.log()

    async def stop(self) -> int:
        return await self.child.stop()


class PowerDNS:
    """PowerDNS Authoritative with the gsqlite3 backend, the HTTP API and LUA records.

    Zones are made through the API (:meth:`create_zone`), so they are served at once; RFC 2136
    updates are on, each zone accepting only the TSIG keys :meth:`allow_update` names."""

    def __init__(
        self, child: Child, *, workdir: Path, port: int, api_port: int, api_key: str
    ) -> None:
        self.child = child
        self.workdir = workdir
        self.port = port
        self.api_port = api_port
        self.api_key = api_key

    @property
    def server(self) -> str:
        """``host:port`` of the DNS listener."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def api_url(self) -> str:
        return f"http://{LOOPBACK}:{self.api_port}"

    @classmethod
    async def start(
        cls,
        workdir: Path,
        *,
        api_key: str | None = None,
        lua_records: bool = True,
        port: int | None = None,
        api_port: int | None = None,
    ) -> PowerDNS:
        binary = find_binary("pdns_server")
        if not await asyncio.to_thread(PDNS_SCHEMA.exists):
            raise MissingBinary(
                f"{PDNS_SCHEMA} is missing: the tests need the sqlite backend of PowerDNS "
                "(Debian: apt-get install -y pdns-backend-sqlite3). Never skipped."
            )
        api_key = api_key or secrets.token_hex(16)
        port = port or free_dns_port()
        api_port = api_port or free_port()
        settings = {
            "launch": "gsqlite3",
            "gsqlite3-database": f"{workdir}/pdns.sqlite3",
            "local-address": LOOPBACK,
            "local-port": str(port),
            "socket-dir": str(workdir),
            "daemon": "no",
            "guardian": "no",
            "disable-syslog": "yes",
            "security-poll-suffix": "",
            "webserver": "yes",
            "webserver-address": LOOPBACK,
            "webserver-port": str(api_port),
            "webserver-allow-from": f"{LOOPBACK}/32",
            "api": "yes",
            "api-key": api_key,
            "enable-lua-records": "yes" if lua_records else "no",
            "dnsupdate": "yes",
            "allow-dnsupdate-from": f"{LOOPBACK}/32",
            "default-soa-content": "ns1.@ hostmaster.@ 0 10800 3600 604800 3600",
        }
        (workdir / "pdns.conf").write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
        await asyncio.to_thread(_create_db, workdir / "pdns.sqlite3")
        assert_port_unused(port)
        assert_port_unused(api_port)
        child = await Child.spawn("pdns", [binary, f"--config-dir={workdir}"], workdir)
        pdns = cls(child, workdir=workdir, port=port, api_port=api_port, api_key=api_key)
        try:
            await wait_dns(child, port)
            await pdns._wait_api(within=15.0)
        except BaseException:
            await pdns.stop()
            raise
        return pdns

    async def _wait_api(self, *, within: float) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                status, _ = await self.api("GET", "")
                if status == 200:
                    return
            await asyncio.sleep(0.02)
        raise TimeoutError(f"PowerDNS API on {self.api_url} not ready in {within}s")

    async def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """One API call under ``/api/v1/servers/localhost``; ``(status, JSON body or text)``."""
        url = f"{self.api_url}/api/v1/servers/localhost{path}"
        timeout = aiohttp.ClientTimeout(total=5.0)
        headers = {"X-API-Key": self.api_key}
        async with (
            aiohttp.ClientSession(timeout=timeout, headers=headers) as session,
            session.request(method, url, json=body) as response,
        ):
            text = await response.text()
            if response.content_type == "application/json" and text:
                return response.status, await response.json()
            return response.status, text

    async def create_zone(
        self, zone: str, records: Mapping[tuple[str, str], tuple[int, Sequence[str]]]
    ) -> None:
        """A native zone with ``{(name, type): (ttl, [content, ...])}`` records."""
        rrsets = [
            {
                "name": name,
                "type": rtype,
                "ttl": ttl,
                "changetype": "REPLACE",
                "records": [{"content": c, "disabled": False} for c in contents],
            }
            for (name, rtype), (ttl, contents) in records.items()
        ]
        body = {"name": zone, "kind": "Native", "nameservers": [f"ns1.{zone}"], "rrsets": rrsets}
        status, answer = await self.api("POST", "/zones", body)
        if status != 201:
            raise RuntimeError(f"PowerDNS: creating zone {zone} -> {status} {answer}")

    async def allow_update(self, zone: str, key: TsigKey) -> None:
        """Import ``key`` and let it (only it) send RFC 2136 updates to ``zone``."""
        key_body = {"name": key.name, "algorithm": key.algorithm, "key": key.secret}
        status, answer = await self.api("POST", "/tsigkeys", key_body)
        if status != 201:
            raise RuntimeError(f"PowerDNS: importing TSIG key {key.name} -> {status}")
        meta = {"kind": "TSIG-ALLOW-DNSUPDATE", "metadata": [key.name]}
        status, answer = await self.api("POST", f"/zones/{zone}/metadata", meta)
        if status != 201:
            raise RuntimeError(f"PowerDNS: TSIG-ALLOW-DNSUPDATE on {zone} -> {status} {answer}")

    def log(self) -> str:
        return self.child.log()

    async def stop(self) -> int:
        return await self.child.stop()


def _create_db(path: Path) -> None:
    db = sqlite3.connect(path)
    try:
        db.executescript(PDNS_SCHEMA.read_text())
    finally:
        db.close()
