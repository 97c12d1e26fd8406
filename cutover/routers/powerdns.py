"""PowerDNS router: exact weighted answers for one DNS name through the PowerDNS HTTP API.

Plain RRsets can only approximate a share (see :mod:`cutover.routers.rfc2136`); PowerDNS
Authoritative can answer each query with one address picked by weight, from a ``LUA`` record
running ``pickwrandom`` (PowerDNS docs, "Lua Records", ``pickwrandom(values)``). Checked
against PowerDNS 4.7 with the gsqlite3 backend (recipes/dns-servers.md).

* **What is published** (PRODUCT.md, DNS): at 0 % and 100 % plain A/AAAA RRsets with exactly
  one color's addresses and no ``LUA`` record for A/AAAA; in between no plain A/AAAA RRset
  and one ``LUA`` record per family, ``A "pickwrandom({{9, '192.0.2.10'}, {1, '…'}})"``,
  whose weights put the colors in the exact ratio ``100 - share : share``
  (:func:`cutover.core.dns_split.lua_weights`). ``LUA`` records of other types on the same
  name are not ours: they are kept as they are (only their TTL follows, since one RRset has
  one TTL).
* **One PATCH per change.** PowerDNS applies all RRsets of one ``PATCH
  /api/v1/servers/{server_id}/zones/{zone}`` in one backend transaction, and purges its caches,
  so the first query after the answer already sees the change (recipes/dns-servers.md).
* **No compare-and-swap.** The API has no conditional PATCH, so unlike RFC 2136 a write cannot
  require the name to be as last read; the engine's read-back before each forward write (drift
  check) is the guard, with a window of one round trip.
* **Read-back** through the API (``GET`` the zone, filtered to the name) gives the state:
  ``{"A", "AAAA", "LUA A", "LUA AAAA", "ttl"}``, addresses sorted and LUA weights as
  ``address=weight`` reduced by their gcd, so equal splits compare equal. A LUA record for
  A/AAAA that is not a plain ``pickwrandom`` list shows under ``"LUA other"`` (drift). With
  ``dns_server`` set, one real query per family then proves the server *answers* with a
  published address: the API accepts a LUA record whose code fails, which then answers
  SERVFAIL.
* **Preflight**: the API key works (401 is a :class:`~cutover.errors.PermanentError` naming
  the API URL, never the key), the zone exists, ``enable-lua-records`` is on (read from
  ``GET …/config``; without it a LUA record is not run), and the name publishes only addresses
  of the two colors.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import reduce
from math import gcd
from typing import Any, Literal, Self
from urllib.parse import quote, urlsplit

import aiohttp
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
from pydantic import Field, field_validator, model_validator

from cutover.core.dns_split import (
    FAMILIES,
    Family,
    Published,
    Weights,
    by_family,
    canonical_address,
    lua_weights,
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
    ServerAddress,
    exchange,
    load_secret,
    parse_server,
    rcode_error,
)

__all__ = ["PowerDNSRouter", "PowerDNSSpec", "lua_content", "parse_lua"]

_SERVER_ID = re.compile(r"^[A-Za-z0-9_.-]+$")
_LUA = re.compile(r'^\s*(A|AAAA)\s+"\s*pickwrandom\s*\(\s*\{(.*)\}\s*\)\s*"\s*$', re.DOTALL)
_PAIR = r"\{\s*(\d+)\s*,\s*'([^']*)'\s*\}"
_PAIRS = re.compile(rf"\s*{_PAIR}(?:\s*,\s*{_PAIR})*\s*")
_ENABLED = frozenset({"yes", "true", "on", "1", "shared"})
_ERROR_TEXT = 200  # characters of a PowerDNS error answer quoted in a message


def lua_content(family: Family, weights: Mapping[str, int]) -> str:
    """The content of a ``LUA`` record answering ``family`` with ``pickwrandom``, addresses
    sorted: ``A "pickwrandom({{9, '192.0.2.10'}, {1, '198.51.100.10'}})"``."""
    pairs = ", ".join(f"{{{weights[a]}, '{a}'}}" for a in sorted(weights))
    return f'{family} "pickwrandom({{{pairs}}})"'


def parse_lua(content: str) -> tuple[Family, dict[str, int]] | None:
    """The family and weights (reduced by their gcd) of a ``pickwrandom`` record written like
    :func:`lua_content` (any spacing), or ``None`` for any other Lua code."""
    match = _LUA.match(content)
    if not match or not _PAIRS.fullmatch(match.group(2)):
        return None
    weights: dict[str, int] = {}
    for weight, address in re.findall(_PAIR, match.group(2)):
        try:
            canonical = canonical_address(address)
        except ValueError:
            return None
        weights[canonical] = weights.get(canonical, 0) + int(weight)
    g = reduce(gcd, weights.values())
    if g == 0:
        return None
    family: Family = "A" if match.group(1) == "A" else "AAAA"
    return family, {a: w // g for a, w in weights.items()}


class PowerDNSSpec(DnsSpecBase):
    """``type: powerdns``: a name in a zone of a PowerDNS Authoritative server, set through
    its HTTP API; ``dns_server`` (optional) is where a real query proves the answers."""

    type: Literal["powerdns"]
    api_url: str
    api_key_file: str | None = Field(default=None, min_length=1)
    api_key_env: str | None = Field(default=None, min_length=1)
    server_id: str = "localhost"
    dns_server: str | None = None

    def resolve_paths(self, resolve: Callable[[str], str]) -> Self:
        if self.api_key_file is None:
            return self
        return self.model_copy(update={"api_key_file": resolve(self.api_key_file)})

    @field_validator("api_url")
    @classmethod
    def _check_api_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL, e.g. http://127.0.0.1:8081")
        return value.rstrip("/")

    @field_validator("server_id")
    @classmethod
    def _check_server_id(cls, value: str) -> str:
        if not _SERVER_ID.match(value):
            raise ValueError("must be a PowerDNS server id like localhost")
        return value

    @field_validator("dns_server")
    @classmethod
    def _check_dns_server(cls, value: str | None) -> str | None:
        if value is not None:
            parse_server(value)
        return value

    @model_validator(mode="after")
    def _one_key_source(self) -> PowerDNSSpec:
        if (self.api_key_file is None) == (self.api_key_env is None):
            raise ValueError("give exactly one of api_key_file or api_key_env")
        return self

    def build(self, *, new: Color, resources: Resources) -> PowerDNSRouter:
        return PowerDNSRouter(self, new=new, secrets=resources.secrets)


@dataclass(frozen=True)
class _Snapshot:
    """One API read of the name: plain RRsets, our LUA weights, and what is not ours."""

    plain: Published
    lua: Weights
    ttls: frozenset[int]
    serial: int
    unparsed: tuple[str, ...] = ()  # LUA records for A/AAAA in another form
    kept: tuple[dict[str, Any], ...] = ()  # LUA records of other types

    def served(self, family: Family) -> set[str]:
        """Every address an answer for ``family`` may carry."""
        return set(self.plain[family]) | set(self.lua[family])


class PowerDNSRouter:
    """Sets and reads the weighted answers of one name on PowerDNS (see the module docstring).

    Holds one :class:`aiohttp.ClientSession`, made in the running loop at first use and
    closed by :meth:`aclose`."""

    def __init__(self, spec: PowerDNSSpec, *, new: Color, secrets: SecretSink) -> None:
        self._spec = spec
        self._secrets = secrets
        self._new_color: Color = new
        self._new: tuple[str, ...] = tuple(spec.green if new == "green" else spec.blue)
        self._old: tuple[str, ...] = tuple(spec.blue if new == "green" else spec.green)
        self._who = f"router {spec.name!r}"
        self._where = f"{self._who}: PowerDNS API {spec.api_url}"
        self._server_url = f"{spec.api_url}/api/v1/servers/{spec.server_id}"
        self._zone_url = f"{self._server_url}/zones/{quote(spec.zone, safe='.')}"
        self._dns: ServerAddress | None = (
            parse_server(spec.dns_server) if spec.dns_server is not None else None
        )
        # what the name publishes when it is ours (both colors have the same families)
        self._families = tuple(f for f, found in by_family(spec.blue).items() if found)
        self._session: aiohttp.ClientSession | None = None
        self._kept: tuple[dict[str, Any], ...] | None = None  # other LUA records, last read
        self._asked: int | None = None

    @property
    def name(self) -> str:
        return self._spec.name

    @property
    def kind(self) -> str:
        return "powerdns"

    # --- pure ---------------------------------------------------------------------------

    def expected(self, share: int, *, evacuate: bool = False) -> RouterState:
        # evacuate: DNS cannot move established sessions; 0 % is all a rollback can do
        if share in (0, 100):
            plain, lua = published(share, self._old, self._new), _no_lua()
        else:
            plain, lua = _no_plain(), lua_weights(share, self._old, self._new)
        return _state(plain, lua, frozenset({self._spec.ttl}))

    def rrsets(self, share: int, *, kept: tuple[dict[str, Any], ...] = ()) -> list[dict[str, Any]]:
        """The ``rrsets`` of the one PATCH that sets ``share`` (``kept``: LUA records of other
        types on the name, written back unchanged)."""
        ttl = self._spec.ttl
        record = self._spec.record
        lua_records = list(kept)
        plain: Published = _no_plain()
        if share in (0, 100):
            plain = published(share, self._old, self._new)
        else:
            weights = lua_weights(share, self._old, self._new)
            lua_records += [
                {"content": lua_content(f, weights[f]), "disabled": False}
                for f in FAMILIES
                if weights[f]
            ]
        out: list[dict[str, Any]] = [_rrset(record, f, ttl, list(plain[f])) for f in FAMILIES]
        if lua_records:
            out.append(
                {
                    "name": record,
                    "type": "LUA",
                    "ttl": ttl,
                    "changetype": "REPLACE",
                    "records": lua_records,
                }
            )
        else:
            out.append({"name": record, "type": "LUA", "changetype": "DELETE"})
        return out

    # --- I/O ----------------------------------------------------------------------------

    async def preflight(self) -> None:
        await self._call("GET", self._server_url, doing="reading the server")
        config = await self._call("GET", f"{self._server_url}/config", doing="reading its config")
        settings = {
            str(item.get("name")): str(item.get("value", ""))
            for item in config
            if isinstance(item, dict)
        }
        lua = settings.get("enable-lua-records")
        if lua is None or lua.strip().lower() not in _ENABLED:
            raise PermanentError(
                f"{self._where}: LUA records are disabled (enable-lua-records="
                f"{lua if lua is not None else 'not reported'}); the weighted answers between"
                " 0 % and 100 % need enable-lua-records=yes in pdns.conf"
            )
        snap = await self._read()
        listed = set(self._old) | set(self._new)
        if not any(snap.served(f) for f in FAMILIES):
            raise PermanentError(
                f"{self._where}: {self._spec.record} has no A or AAAA record in zone"
                f" {self._spec.zone}; publish the live ({other_color(self._new_color)})"
                " addresses first"
            )
        extra = sorted(a for f in FAMILIES for a in snap.served(f) if a not in listed)
        if extra:
            raise PermanentError(
                f"{self._where}: {self._spec.record} publishes {', '.join(extra)}, in neither"
                " blue nor green; list them or remove them from the record"
            )
        await self._check_answers(snap)

    async def apply(self, share: int, *, evacuate: bool = False) -> None:
        kept = self._kept if self._kept is not None else (await self._read()).kept
        body = {"rrsets": self.rrsets(share, kept=kept)}
        await self._call("PATCH", self._zone_url, body=body, doing=f"setting {share}%")
        self._asked = share

    async def observe(self) -> Reading:
        # the DNS queries of the colors' families go out with the API read, and their
        # answers are judged against it once it is in (a rollback's read-back is then the
        # slower of the two round trips, not their sum)
        families = self._families if self._dns is not None else ()
        early = asyncio.gather(*(self._query(f) for f in families), return_exceptions=True)
        try:
            snap = await self._read()
        except BaseException:
            early.cancel()
            raise
        answers = await self._check_answers(snap, dict(zip(families, await early, strict=True)))
        share = share_of(_weights(snap), self._old, self._new)
        state = dict(_state(snap.plain, snap.lua, snap.ttls))
        if snap.unparsed:
            state["LUA other"] = " | ".join(sorted(snap.unparsed))
        return Reading(share=share, state=state, detail=self._detail(snap, share, answers))

    async def lower_ttl(self) -> float:
        snap = await self._read()
        longest = max(snap.ttls, default=0)
        if longest <= self._spec.ttl:
            return 0.0
        record, ttl = self._spec.record, self._spec.ttl
        rrsets = [_rrset(record, f, ttl, list(snap.plain[f])) for f in FAMILIES if snap.plain[f]]
        lua = [
            {"content": lua_content(f, snap.lua[f]), "disabled": False}
            for f in FAMILIES
            if snap.lua[f]
        ]
        lua += [{"content": c, "disabled": False} for c in snap.unparsed] + list(snap.kept)
        if lua:
            rrsets.append(
                {"name": record, "type": "LUA", "ttl": ttl, "changetype": "REPLACE", "records": lua}
            )
        await self._call(
            "PATCH",
            self._zone_url,
            body={"rrsets": rrsets},
            doing=f"lowering the TTL from {longest}s to {ttl}s",
        )
        return float(longest)

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    # --- helpers ------------------------------------------------------------------------

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            key = load_secret(
                file=self._spec.api_key_file,
                env=self._spec.api_key_env,
                what="PowerDNS API key",
                who=self._who,
                secrets=self._secrets,
            )
            self._session = aiohttp.ClientSession(
                headers={"X-API-Key": key, "Accept": "application/json"},
                timeout=aiohttp.ClientTimeout(total=self._spec.timeout),
            )
        return self._session

    async def _call(
        self,
        method: str,
        url: str,
        *,
        doing: str,
        body: Any = None,
        params: Mapping[str, str] | None = None,
    ) -> Any:
        """One API request; its JSON answer (``None`` for 204), or a translated error."""
        timeout = self._spec.timeout
        try:
            async with self._client().request(method, url, json=body, params=params) as response:
                status = response.status
                text = await response.text()
        except TimeoutError as exc:
            raise TransientError(f"{self._where}: {doing}: no answer within {timeout:g}s") from exc
        except aiohttp.ClientConnectorError as exc:
            raise TransientError(
                f"{self._where}: {doing}: cannot connect (is PowerDNS running with api=yes?)"
            ) from exc
        except aiohttp.ClientError as exc:
            raise TransientError(f"{self._where}: {doing}: {type(exc).__name__}") from exc
        if status in (401, 403):
            key = (
                f"file {self._spec.api_key_file}"
                if self._spec.api_key_file is not None
                else f"environment variable {self._spec.api_key_env}"
            )
            raise PermanentError(
                f"{self._where}: {doing}: the API key was rejected ({status}); check the key in"
                f" {key} against api-key in pdns.conf"
            )
        if status == 404:
            what = "zone" if url == self._zone_url else "server id"
            name = self._spec.zone if what == "zone" else self._spec.server_id
            raise PermanentError(f"{self._where}: {doing}: no {what} {name!r} (404)")
        if status >= 300:
            error_cls = TransientError if status >= 500 else PermanentError
            raise error_cls(f"{self._where}: {doing}: {status} {_error_text(text)}")
        if not text:
            return None
        try:
            return json.loads(text)
        except ValueError as exc:
            raise TransientError(f"{self._where}: {doing}: the answer is not JSON") from exc

    async def _read(self) -> _Snapshot:
        record = dns.name.from_text(self._spec.record)
        zone = await self._get_zone()
        plain: dict[Family, list[str]] = {f: [] for f in FAMILIES}
        lua: Weights = {f: {} for f in FAMILIES}
        ttls: set[int] = set()
        unparsed: list[str] = []
        kept: list[dict[str, Any]] = []
        for rrset in zone.get("rrsets", []):
            if dns.name.from_text(str(rrset.get("name", "."))) != record:
                continue
            rtype = rrset.get("type")
            records = [r for r in rrset.get("records", []) if not r.get("disabled")]
            if rtype in FAMILIES and records:
                plain[rtype] += [canonical_address(r["content"]) for r in records]
                ttls.add(int(rrset["ttl"]))
            elif rtype == "LUA":
                ours = False
                for r in rrset.get("records", []):
                    content = str(r.get("content", ""))
                    covered = content.split(None, 1)[0] if content.strip() else ""
                    if covered not in FAMILIES:
                        kept.append({"content": content, "disabled": bool(r.get("disabled"))})
                        continue
                    if r.get("disabled"):
                        continue
                    ours = True
                    parsed = parse_lua(content)
                    if parsed is None or lua[parsed[0]]:
                        unparsed.append(content)
                    else:
                        lua[parsed[0]] = parsed[1]
                if ours:
                    ttls.add(int(rrset["ttl"]))
        self._kept = tuple(kept)
        return _Snapshot(
            plain={f: tuple(sorted(plain[f])) for f in FAMILIES},
            lua=lua,
            ttls=frozenset(ttls),
            serial=int(zone.get("serial", 0)),
            unparsed=tuple(unparsed),
            kept=tuple(kept),
        )

    async def _get_zone(self) -> dict[str, Any]:
        # rrset_name (PowerDNS 4.7+) keeps the answer small; older servers send the whole zone
        zone = await self._call(
            "GET",
            self._zone_url,
            params={"rrset_name": self._spec.record},
            doing=f"reading {self._spec.record}",
        )
        if not isinstance(zone, dict):
            raise TransientError(f"{self._where}: reading the zone: unexpected answer")
        return zone

    async def _check_answers(
        self,
        snap: _Snapshot,
        asked: Mapping[Family, dns.message.Message | BaseException] | None = None,
    ) -> dict[Family, list[str]]:
        """With ``dns_server``: one real query per published family (``asked``: answers or
        errors of queries already made); each answer must be authoritative and carry only
        published addresses (else TransientError)."""
        if self._dns is None:
            return {}
        answers = dict(asked or {})
        families = [f for f in FAMILIES if snap.served(f)]
        missing = [f for f in families if f not in answers]
        found = await asyncio.gather(*(self._query(f) for f in missing), return_exceptions=True)
        answers.update(zip(missing, found, strict=True))
        return {f: self._judge(f, answers[f], snap.served(f)) for f in families}

    async def _query(self, family: Family) -> dns.message.Message:
        assert self._dns is not None
        query = dns.message.make_query(self._spec.record, family, dns.rdataclass.IN)
        query.flags &= ~dns.flags.RD
        return await exchange(query, self._dns, within=self._spec.timeout, who=self._who, udp=True)

    def _judge(
        self, family: Family, answer: dns.message.Message | BaseException, allowed: set[str]
    ) -> list[str]:
        if isinstance(answer, BaseException):
            raise answer
        assert self._dns is not None
        host, port = self._dns
        where = f"{self._who}: DNS server {host}:{port}"
        doing = f"query {self._spec.record} {family}"
        if answer.rcode() == dns.rcode.SERVFAIL:
            raise TransientError(
                f"{where}: {doing}: SERVFAIL (a LUA record that cannot run answers so; are LUA"
                " records enabled, is the record valid?)"
            )
        if answer.rcode() != dns.rcode.NOERROR:
            raise rcode_error(answer, where, doing, zone=self._spec.zone)
        rrset = answer.get_rrset(
            answer.answer,
            dns.name.from_text(self._spec.record),
            dns.rdataclass.IN,
            dns.rdatatype.from_text(family),
        )
        got = sorted(canonical_address(rd.to_text()) for rd in rrset) if rrset else []
        if not got or not answer.flags & dns.flags.AA or not set(got) <= allowed:
            raise TransientError(
                f"{where}: {doing}: answered {render_addresses(got) or 'nothing'}"
                f"{'' if answer.flags & dns.flags.AA else ' (not authoritative)'}, but the API"
                f" publishes {render_addresses(allowed)}"
            )
        return got

    def _detail(
        self, snap: _Snapshot, share: float | None, answers: dict[Family, list[str]]
    ) -> str:
        parts = []
        asked = "" if self._asked is None else f" (asked {self._asked}%)"
        if share is None:
            parts.append("no address of either color published")
        elif any(snap.lua.values()):
            parts.append(f"LUA pickwrandom weights: {percent(share)}% {self._new_color}{asked}")
        else:
            parts.append(f"plain RRsets: address share {percent(share)}%{asked}")
        parts.append(f"TTL {','.join(str(t) for t in sorted(snap.ttls)) or 'none'}")
        parts.append(f"SOA serial {snap.serial}")
        if answers:
            said = ", ".join(f"{f} {' '.join(a)}" for f, a in answers.items())
            parts.append(f"DNS {self._spec.dns_server} answered {said}")
        return "; ".join(parts)


def _rrset(record: str, family: Family, ttl: int, addresses: list[str]) -> dict[str, Any]:
    """A plain A/AAAA RRset change: REPLACE with ``addresses``, or DELETE when empty."""
    if not addresses:
        return {"name": record, "type": family, "changetype": "DELETE"}
    return {
        "name": record,
        "type": family,
        "ttl": ttl,
        "changetype": "REPLACE",
        "records": [{"content": a, "disabled": False} for a in addresses],
    }


def _no_plain() -> Published:
    return {f: () for f in FAMILIES}


def _no_lua() -> Weights:
    return {f: {} for f in FAMILIES}


def _weights(snap: _Snapshot) -> Weights:
    """What answers are drawn from, per family: the LUA weights, else the plain RRset."""
    return {f: snap.lua[f] or dict.fromkeys(snap.plain[f], 1) for f in FAMILIES}


def _state(plain: Published, lua: Weights, ttls: frozenset[int]) -> RouterState:
    """The order-independent router state of a name's A/AAAA and LUA records."""
    return {
        "A": render_addresses(plain["A"]),
        "AAAA": render_addresses(plain["AAAA"]),
        "LUA A": " ".join(f"{a}={w}" for a, w in sorted(lua["A"].items())),
        "LUA AAAA": " ".join(f"{a}={w}" for a, w in sorted(lua["AAAA"].items())),
        "ttl": ",".join(str(t) for t in sorted(ttls)),
    }


def _error_text(text: str) -> str:
    """The ``error`` of a PowerDNS JSON error answer, else the start of the text."""
    try:
        body = json.loads(text)
    except ValueError:
        return text.strip()[:_ERROR_TEXT]
    if isinstance(body, dict) and "error" in body:
        return str(body["error"])[:_ERROR_TEXT]
    return text.strip()[:_ERROR_TEXT]
