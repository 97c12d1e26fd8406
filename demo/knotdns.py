"""Knot DNS (``knotd``) as a child on loopback, for the ``rfc2136`` router's tests.

A helper like :class:`demo.dnsservers.Bind`, whose port, readiness and TSIG helpers it
reuses. ``knotd`` runs in the foreground (its default without ``-d``) with its own config,
zone file, TSIG keys, update ACL, database and control socket in one temp dir, listens on a
free 127.0.0.1 port only, and is stopped by its PID (SIGTERM). Observed with Knot DNS 3.2
(Debian 12 ``knot``):

* like BIND it binds UDP with SO_REUSEPORT, so :func:`~demo.dnsservers.assert_port_unused`
  refuses a port someone already listens on;
* an update is allowed by an ``acl`` with ``action: update`` and the key; an update signed
  with a key the ACL does not name is answered NOTAUTH with TSIG error BADKEY, the same as
  an unknown key, and an update for a zone it does not serve with an *unsigned* NOTAUTH;
* updates go to its journal in the storage dir, so a restart in the same dir (:meth:`restart`)
  serves the updated zone.

A missing ``knotd`` raises :class:`~demo.stack.MissingBinary`, which fails a test, never
skips it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from demo.dnsservers import TsigKey, assert_port_unused, find_binary, free_dns_port, wait_dns
from demo.stack import LOOPBACK, Child, MissingBinary

__all__ = ["Knot", "knot_binary", "knot_key_line"]


def knot_key_line(key: TsigKey) -> str:
    """``algorithm:name:secret``, the key format of ``knsupdate -k`` (and ``-y``)."""
    return f"{key.algorithm}:{key.name}:{key.secret}\n"


def _key_item(key: TsigKey) -> str:
    return f"  - id: {key.name}\n    algorithm: {key.algorithm}\n    secret: {key.secret}\n"


def knot_binary(name: str) -> str:
    """``knotd`` or a Knot client tool (``knsupdate``); if missing, :class:`MissingBinary`
    naming the Debian packages (``knot``, ``knot-dnsutils``), not the binary."""
    try:
        return find_binary(name)
    except MissingBinary:
        raise MissingBinary(
            f"'{name}' is not installed; the Knot DNS tests need the real server and tools"
            " (Debian: apt-get install -y knot knot-dnsutils, or run `make test` as root)."
            " Never skipped."
        ) from None


class Knot:
    """``knotd`` serving one primary zone that takes updates signed with ``key``; ``denied``
    keys are known to the server, but its update ACL does not name them."""

    def __init__(
        self, *, workdir: Path, port: int, zone: str, key: TsigKey, denied: Sequence[TsigKey]
    ) -> None:
        self.workdir = workdir
        self.port = port
        self.zone = zone
        self.key = key
        self.denied = tuple(denied)
        self.child: Child | None = None

    @property
    def server(self) -> str:
        """``host:port``, as a router's ``server:`` key wants it."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def key_file(self) -> Path:
        """``key`` in the format of ``knsupdate -k``."""
        return self.workdir / "tsig.knsupdate"

    @property
    def server_key_file(self) -> Path:
        """``key`` as ``keymgr -t`` writes it, included by the server's config."""
        return self.workdir / "tsig.key"

    @classmethod
    async def start(
        cls,
        workdir: Path,
        *,
        key: TsigKey,
        zone: str = "example.test.",
        records: Sequence[str] = (),
        denied: Sequence[TsigKey] = (),
        port: int | None = None,
    ) -> Knot:
        """``records``: zone-file lines relative to the zone (``www 300 IN A 192.0.2.10``)."""
        knot = cls(workdir=workdir, port=port or free_dns_port(), zone=zone, key=key, denied=denied)
        knot.key_file.write_text(knot_key_line(key))
        knot.server_key_file.write_text(f"# {knot_key_line(key)}key:\n{_key_item(key)}")
        denied_keys = f"key:\n{''.join(_key_item(k) for k in denied)}" if denied else ""
        (workdir / "knot.conf").write_text(
            "server:\n"
            f'    rundir: "{workdir}"\n'
            f'    pidfile: "{workdir}/knot.pid"\n'
            f"    listen: {LOOPBACK}@{knot.port}\n"
            "log:\n"
            "  - target: stderr\n"
            "    any: info\n"
            "database:\n"
            f'    storage: "{workdir}"\n'
            f'include: "{knot.server_key_file}"\n'
            f"{denied_keys}"
            "acl:\n"
            "  - id: cutover-update\n"
            f"    key: {key.name}\n"
            "    action: update\n"
            "zone:\n"
            f"  - domain: {zone}\n"
            f'    storage: "{workdir}"\n'
            '    file: "zone.db"\n'
            "    acl: cutover-update\n"
        )
        lines = [
            "$TTL 60",
            f"@ IN SOA ns1.{zone} hostmaster.{zone} 1 3600 600 86400 60",
            f"  IN NS ns1.{zone}",
            f"ns1 IN A {LOOPBACK}",
            *records,
        ]
        (workdir / "zone.db").write_text("\n".join(lines) + "\n")
        await knot._run()
        return knot

    async def _run(self) -> None:
        assert_port_unused(self.port)
        argv = [knot_binary("knotd"), "-c", str(self.workdir / "knot.conf")]
        self.child = await Child.spawn("knotd", argv, self.workdir)
        try:
            await wait_dns(self.child, self.port, self.zone)
        except BaseException:
            await self.stop()
            raise

    async def restart(self) -> None:
        """Stop and start again on the same port, from the same dir (zone, journal)."""
        await self.stop()
        await self._run()

    def log(self) -> str:
        return self.child.log() if self.child is not None else ""

    async def stop(self) -> int | None:
        """SIGTERM to the PID; the exit code, or None if it was not running."""
        child, self.child = self.child, None
        return await child.stop() if child is not None else None
