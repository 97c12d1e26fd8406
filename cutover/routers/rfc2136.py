"""RFC 2136 router: splits one DNS name between blue and green by which addresses it publishes.

For any authoritative server that takes TSIG-signed dynamic updates (RFC 2136, RFC 8945):
checked against BIND 9.18 and PowerDNS 4.7 (recipes/dns-servers.md) and Knot DNS 3.2
(tests/integration/test_knot.py). Plain RRsets carry no weights, so a share becomes a set of
addresses (:mod:`cutover.core.dns_split`): at 0 % exactly the old color's, at 100 %
exactly the new color's, in between every old address plus as many new ones as best fit; the
resulting *address share* is what :meth:`observe` reports.

Decisions:

* **One UPDATE per change.** The A and AAAA RRsets change together in one message, which the
  server applies atomically or not at all (RFC 2136 §3.7), so no resolver ever sees one
  family switched and the other not. A family neither color has is deleted (the router owns
  both RRsets of the name).
* **Prerequisites guard forward shifts** (RFC 2136 §2.4.2/§2.4.3, checked in §3.2): the
  update requires every family's RRset to be exactly what this router last read or wrote
  ("RRset exists (value dependent)", or "RRset does not exist" for an empty one). If another
  writer changed the name in between, the server answers NXRRSET/YXRRSET and changes nothing;
  that is a :class:`~cutover.errors.TransientError`, so the engine re-reads, sees a state it
  did not write and handles it as drift (PRODUCT.md, Drift). A move to 0 % (rollback) carries
  no prerequisite: reconciliation may always move traffic toward the old color, so a rollback
  overwrites a hand edit. (RFC 2136 has no prerequisite on the SOA serial; TTLs are not
  compared by prerequisites, §2.4.)
* **Read-back over TCP** from the authoritative server itself: A, AAAA and SOA, each answer
  required to carry the AA flag. The three queries share one connection, pipelined
  (RFC 7766 6.2.1.1; :func:`cutover.routers.dns_common.exchange_all`): TCP rather than UDP,
  so a server reachable over TCP only (e.g. through an SSH tunnel) works, and no truncation.
  The state is ``{"A": …, "AAAA": …, "ttl": …}`` with sorted addresses; the SOA serial goes
  into the detail.
* **Preflight** proves the TSIG key with an UPDATE whose only content is the prerequisite
  "the zone's SOA exists" (§2.4.1): the server verifies the signature and the update policy,
  changes nothing and does not bump the serial (checked with BIND 9.18 and PowerDNS 4.7).
  It refuses a name with no address, or with addresses in neither color.
* **Errors** name the router, the server and the TSIG key name, never the secret
  (:func:`cutover.routers.dns_common.exchange`): a bad key or secret, REFUSED, NOTAUTH and
  NOTZONE are permanent; timeouts, refused connections and SERVFAIL are transient. A refusal
  shows the server's rcode and TSIG error and every cause that fits, since BIND, Knot DNS
  and PowerDNS answer the same problem differently
  (:func:`cutover.routers.dns_common.rcode_error`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Self

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.tsig
import dns.update
from pydantic import Field, field_validator, model_validator

from cutover.core.dns_split import (
    FAMILIES,
    Family,
    Published,
    address_share,
    canonical_address,
    percent,
    published,
    render_addresses,
    share_of,
)
from cutover.core.model import Color, other_color
from cutover.errors import PermanentError, TransientError
from cutover.resources import Resources, SecretSink
from cutover.routers.base import Reading, RouterState
from cutover.routers.dns_common import (
    DnsSpecBase,
    KeyId,
    TsigAlgorithm,
    absolute_name,
    exchange,
    exchange_all,
    load_secret,
    parse_server,
    rcode_error,
    tsig_key,
)
from cutover.specs import Spec

__all__ = ["Rfc2136Router", "Rfc2136Spec", "TsigSpec"]

#: Answers to an UPDATE whose prerequisites failed (RFC 2136 §2.2, §3.2.5).
_PREREQUISITE_FAILED = frozenset(
    {dns.rcode.NXRRSET, dns.rcode.YXRRSET, dns.rcode.NXDOMAIN, dns.rcode.YXDOMAIN}
)


class TsigSpec(Spec):
    """``tsig:`` the key the updates are signed with; the secret comes from a file (a bare
    base64 secret, or a key file as BIND's ``tsig-keygen`` or Knot's ``keymgr -t`` writes it)
    or an environment variable, never inline."""

    name: str = Field(min_length=1)
    algorithm: TsigAlgorithm = "hmac-sha256"
    secret_file: str | None = Field(default=None, min_length=1)
    secret_env: str | None = Field(default=None, min_length=1)

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        return absolute_name(value)

    @model_validator(mode="after")
    def _one_source(self) -> TsigSpec:
        if (self.secret_file is None) == (self.secret_env is None):
            raise ValueError("give exactly one of secret_file or secret_env")
        return self


class Rfc2136Spec(DnsSpecBase):
    """``type: rfc2136``: a name in a zone of an authoritative server taking signed updates."""

    type: Literal["rfc2136"]
    server: str
    tsig: TsigSpec

    def resolve_paths(self, resolve: Callable[[str], str]) -> Self:
        if self.tsig.secret_file is None:
            return self
        tsig = self.tsig.model_copy(update={"secret_file": resolve(self.tsig.secret_file)})
        return self.model_copy(update={"tsig": tsig})

    @field_validator("server")
    @classmethod
    def _check_server(cls, value: str) -> str:
        parse_server(value)
        return value

    def build(self, *, new: Color, resources: Resources) -> Rfc2136Router:
        return Rfc2136Router(self, new=new, secrets=resources.secrets)


@dataclass(frozen=True)
class _Snapshot:
    """One read of the name: each family's addresses and TTL, and the zone's SOA serial."""

    rrsets: Published
    ttls: dict[Family, int]
    serial: int


class Rfc2136Router:
    """Sets and reads the addresses of one DNS name over RFC 2136 (see the module docstring)."""

    def __init__(self, spec: Rfc2136Spec, *, new: Color, secrets: SecretSink) -> None:
        self._spec = spec
        self._secrets = secrets
        self._new_color: Color = new
        self._new: tuple[str, ...] = tuple(spec.green if new == "green" else spec.blue)
        self._old: tuple[str, ...] = tuple(spec.blue if new == "green" else spec.green)
        self._who = f"router {spec.name!r}"
        self._server = parse_server(spec.server)
        self._where = f"{self._who}: DNS server {self._server[0]}:{self._server[1]}"
        self._zone = dns.name.from_text(spec.zone)
        self._record = dns.name.from_text(spec.record)
        self._key: dns.tsig.Key | None = None  # never formatted: its repr shows the secret
        self._known: Published | None = None  # last read or written: a forward prerequisite
        self._asked: int | None = None

    @property
    def name(self) -> str:
        return self._spec.name

    @property
    def kind(self) -> str:
        return "rfc2136"

    # --- pure ---------------------------------------------------------------------------

    def published(self, share: int) -> Published:
        """The addresses of each family at ``share``."""
        return published(share, self._old, self._new)

    def address_share(self, share: int) -> float:
        """The new color's share of the addresses published at ``share`` (shown next to it)."""
        return address_share(share, self._old, self._new)

    def expected(self, share: int, *, evacuate: bool = False) -> RouterState:
        # evacuate: DNS cannot move established sessions; 0 % is all a rollback can do
        return _state(self.published(share), {self._spec.ttl})

    # --- I/O ----------------------------------------------------------------------------

    async def preflight(self) -> None:
        update = self._update()
        update.present(self._zone, dns.rdatatype.SOA)  # RFC 2136 §2.4.1: changes nothing
        await self._send(update, "signed no-op update (TSIG and update policy check)")
        snap = await self._read()
        listed = set(self._old) | set(self._new)
        if not any(snap.rrsets.values()):
            raise PermanentError(
                f"{self._where}: {self._spec.record} has no A or AAAA record; publish the live"
                f" ({other_color(self._new_color)}) addresses first"
            )
        extra = sorted(a for f in FAMILIES for a in snap.rrsets[f] if a not in listed)
        if extra:
            raise PermanentError(
                f"{self._where}: {self._spec.record} publishes {', '.join(extra)}, in neither"
                " blue nor green; list them or remove them from the record"
            )

    async def apply(self, share: int, *, evacuate: bool = False) -> None:
        target = self.published(share)
        update = self._update()
        if share > 0:  # forward: only from what we last read or wrote (RFC 2136 §2.4.2-3)
            known = self._known if self._known is not None else (await self._read()).rrsets
            self._require(update, known)
        for family in FAMILIES:
            if target[family]:
                update.replace(self._record, self._spec.ttl, family, *target[family])
            else:
                update.delete(self._record, family)
        await self._send(update, f"setting {share}% {self._new_color}")
        self._known = target
        self._asked = share

    async def observe(self) -> Reading:
        snap = await self._read()
        share = share_of(_ones(snap.rrsets), self._old, self._new)
        return Reading(
            share=share,
            state=_state(snap.rrsets, set(snap.ttls.values())),
            detail=self._detail(snap, share),
        )

    async def lower_ttl(self) -> float:
        snap = await self._read()
        longest = max(snap.ttls.values(), default=0)
        if longest <= self._spec.ttl:
            return 0.0
        update = self._update()
        self._require(update, snap.rrsets)
        for family in FAMILIES:
            if snap.rrsets[family]:
                update.replace(self._record, self._spec.ttl, family, *snap.rrsets[family])
        await self._send(update, f"lowering the TTL from {longest}s to {self._spec.ttl}s")
        return float(longest)

    async def aclose(self) -> None:
        """Nothing to release: every message uses its own connection."""

    # --- helpers ------------------------------------------------------------------------

    def _update(self) -> dns.update.UpdateMessage:
        if self._key is None:
            tsig = self._spec.tsig
            source = (
                f"file {tsig.secret_file}"
                if tsig.secret_file is not None
                else f"environment variable {tsig.secret_env}"
            )
            secret = load_secret(
                file=tsig.secret_file,
                env=tsig.secret_env,
                what="TSIG secret",
                who=self._who,
                secrets=self._secrets,
            )
            self._key = tsig_key(
                name=tsig.name,
                algorithm=tsig.algorithm,
                secret=secret,
                source=source,
                who=self._who,
                secrets=self._secrets,
            )
        return dns.update.UpdateMessage(self._zone, keyring=self._key)

    def _require(self, update: dns.update.UpdateMessage, rrsets: Published) -> None:
        """Prerequisites: each family's RRset is exactly ``rrsets`` (RFC 2136 §2.4.2/§2.4.3)."""
        for family in FAMILIES:
            if rrsets[family]:
                update.present(self._record, family, *rrsets[family])
            else:
                update.absent(self._record, family)

    async def _send(self, update: dns.update.UpdateMessage, doing: str) -> None:
        answer = await exchange(
            update,
            self._server,
            within=self._spec.timeout,
            who=self._who,
            key_name=self._spec.tsig.name,
        )
        rcode = answer.rcode()
        if rcode == dns.rcode.NOERROR:
            return
        if rcode in _PREREQUISITE_FAILED:
            # _known stays: the guard holds until someone reads the name again (the engine's
            # read-back, which then sees a state it did not write: drift)
            raise TransientError(
                f"{self._where}: {doing}: {self._spec.record} changed since this router last"
                f" read it (prerequisite failed: {dns.rcode.to_text(rcode)}); another writer"
                " edits it, so a forward shift does not overwrite it (a move to 0 % would)"
            )
        raise rcode_error(
            answer,
            self._where,
            f"{doing} (TSIG key {self._spec.tsig.name!r})",
            zone=self._spec.zone,
            key=KeyId(self._spec.tsig.name, self._spec.tsig.algorithm),
        )

    def _checked(self, answer: dns.message.Message) -> dns.message.Message:
        """An answer of the read-back, refused unless NOERROR/NXDOMAIN and authoritative."""
        question = answer.question[0]
        doing = f"query {question.name} {dns.rdatatype.to_text(question.rdtype)}"
        if answer.rcode() not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            raise rcode_error(answer, self._where, doing, zone=self._spec.zone)
        if not answer.flags & dns.flags.AA:
            raise PermanentError(
                f"{self._where}: {doing}: the answer is not authoritative (no AA flag); point"
                f" server at a primary server of zone {self._spec.zone}"
            )
        return answer

    async def _read(self) -> _Snapshot:
        queries = []
        for name, rdtype in (
            (self._zone, dns.rdatatype.SOA),
            (self._record, dns.rdatatype.A),
            (self._record, dns.rdatatype.AAAA),
        ):
            query = dns.message.make_query(name, rdtype, dns.rdataclass.IN)
            query.flags &= ~dns.flags.RD  # ask the authoritative data, nothing recursive
            queries.append(query)
        answers = await exchange_all(
            queries, self._server, within=self._spec.timeout, who=self._who
        )
        soa, a, aaaa = (self._checked(answer) for answer in answers)
        soa_rrset = soa.get_rrset(soa.answer, self._zone, dns.rdataclass.IN, dns.rdatatype.SOA)
        if soa.rcode() != dns.rcode.NOERROR or soa_rrset is None:
            raise PermanentError(
                f"{self._where}: no SOA for zone {self._spec.zone} (is this the zone's server?)"
            )
        rrsets: Published = {}
        ttls: dict[Family, int] = {}
        for family, answer in zip(FAMILIES, (a, aaaa), strict=True):
            rrset = answer.get_rrset(
                answer.answer, self._record, dns.rdataclass.IN, dns.rdatatype.from_text(family)
            )
            if rrset is None:
                rrsets[family] = ()
                continue
            rrsets[family] = tuple(sorted(canonical_address(rd.to_text()) for rd in rrset))
            ttls[family] = rrset.ttl
        self._known = rrsets
        return _Snapshot(rrsets=rrsets, ttls=ttls, serial=int(soa_rrset[0].serial))

    def _detail(self, snap: _Snapshot, share: float | None) -> str:
        parts = []
        if share is None:
            parts.append("no address of either color published")
        else:
            asked = "" if self._asked is None else f" (asked {self._asked}%)"
            parts.append(f"address share {percent(share)}%{asked}")
        new, old = set(self._new), set(self._old)
        families = [f for f in FAMILIES if snap.rrsets[f]]
        if len(families) > 1:
            parts.append(
                ", ".join(
                    f"{f} {sum(a in new for a in snap.rrsets[f])}/{len(snap.rrsets[f])} new"
                    for f in families
                )
            )
        extra = sum(a not in new and a not in old for f in families for a in snap.rrsets[f])
        if extra:
            parts.append(f"{extra} address(es) in neither color")
        ttl = ", ".join(f"{f} {snap.ttls[f]}s" for f in families)
        parts.append(f"TTL {ttl}" if ttl else "no TTL")
        parts.append(f"SOA serial {snap.serial}")
        return "; ".join(parts)


def _state(rrsets: Published, ttls: set[int]) -> RouterState:
    """The order-independent router state of a name's A and AAAA RRsets."""
    return {
        "A": render_addresses(rrsets["A"]),
        "AAAA": render_addresses(rrsets["AAAA"]),
        "ttl": ",".join(str(t) for t in sorted(ttls)),
    }


def _ones(rrsets: Published) -> dict[Family, dict[str, int]]:
    """Plain RRsets as weights: a resolver picks each address about equally often."""
    return {family: dict.fromkeys(addresses, 1) for family, addresses in rrsets.items()}
