"""HAProxy router: splits one backend between blue and green servers by runtime weights.

Everything goes through HAProxy's runtime API (the "stats socket"; HAProxy 2.6 management
guide, section 9.3 "Unix Socket commands"), over a unix socket (``unix:/path``) or TCP
(``tcp:host:port``). The behaviour below was checked against HAProxy 2.6.12.

Protocol (management guide 9.3): in the default non-interactive mode HAProxy reads one line,
runs the commands on it that are separated by ``;``, writes their answers one after the other
and closes the connection. So every call here is *one connection, one line, one round trip*,
under :attr:`HAProxySpec.timeout` (which includes waiting for a free connection, below). The
commands of a line run in order, and one that fails does not stop the next (checked with
2.6.12), so :meth:`HAProxyRouter.apply_and_observe` writes and reads back on one line. Each
line starts with ``set severity-output number``: error answers then come back as
``[3]: No such server.`` while a successful ``set server`` answers with nothing. Every answer
ends with an empty line, which is how the answers of one line are told apart.

Commands used (all from the management guide):

* ``show cli level`` — the socket must be at level ``admin`` to set weights.
* ``show stat <backend> 6 -1`` — the CSV stats (guide section 9.1) of the backend and its
  servers; field ``algo`` names the balance algorithm, field ``bck`` marks backup servers.
* ``show servers state <backend>`` — per server ``srv_op_state`` (2 = running/UP),
  ``srv_admin_state`` (bit mask: 0x01 forced maint, 0x02 inherited maint, 0x04 maint from the
  config, 0x20 maint after a resolution failure, 0x08 forced drain, 0x10 inherited drain),
  ``srv_uweight`` (current weight) and ``srv_iweight`` (configured weight).
* ``set server <backend>/<server> weight <0..256>`` and
  ``set server <backend>/<server> state ready|maint``.

Decisions:

* **Balance algorithms.** Runtime weights set the split only for the dynamic, weight-driven
  algorithms: ``roundrobin``, ``leastconn`` and ``random`` (whose documentation says server
  weights are respected and dynamic weight changes take effect at once). Preflight refuses
  ``static-rr`` (HAProxy answers "Backend is using a static LB algorithm and only accepts
  weights '0%' and '100%'."), ``first`` (fills servers in order; weights do not split) and the
  hash-based ones (``source``, ``uri``, ``url_param``, ``hdr``, ``rdp-cookie``, ``hash``): with
  map-based hashing they are static, and even with ``hash-type consistent`` the split follows
  the request keys, not the weights. HAProxy 2.6 reports ``random`` as ``unknown`` in the
  ``algo`` field (its name table lacks it), so ``unknown`` is accepted too; a static algorithm
  hiding behind it would still be refused by HAProxy at the first :meth:`HAProxyRouter.apply`,
  which raises :class:`~cutover.errors.PermanentError`.
* **Ownership.** The router owns the weight *and* admin state of every listed server: a forward
  :meth:`~HAProxyRouter.apply` sets each one ``ready`` (clearing a ``maint`` or ``drain`` someone
  else set), and :meth:`~HAProxyRouter.observe` reports such a state as ``"maint"`` /
  ``"drain"``, which :meth:`~HAProxyRouter.expected` never contains, so it shows as drift.
  Health (UP/DOWN) is not ours: a server failing its checks changes ``Reading.share`` but not
  ``Reading.state``.
* **Other servers.** Preflight refuses a backend with unlisted non-backup servers that can take
  traffic (weight > 0, not in maint): they would take a part of the traffic outside the split.
  The observed share counts the listed servers only.
* **One client per address, shared.** A stats socket takes ``stats maxconn`` connections at once
  (10 by default) and resets the next one, while a daemon may drive hundreds of services on one
  HAProxy. All routers of an address share one :class:`RuntimeAPI`, from the daemon's
  :data:`RUNTIME_APIS` resource (handed to :meth:`HAProxySpec.build`), which opens at most
  :data:`MAX_CONNECTIONS` (8) at a time and serves reads asked close together
  (:data:`READ_SPACING`) with one line of ``show servers state <backend>`` commands, each read sent
  only after it was asked (so a read-back sees the write before it). Per-backend commands rather
  than one ``show servers state`` of every backend: an answer as large as what was asked, and
  HAProxy's own error for a missing backend. It keeps no connection between calls, so closing a
  router releases nothing shared.
* **Order of one apply.** Servers that end up ready with weight > 0 are written first, the rest
  after, so the backend never has every server at weight 0 between two commands of a line.
* **Errors.** Any HAProxy error answer ("No such server.", "No such backend.", a static
  algorithm, a weight out of range, "Permission denied") is a
  :class:`~cutover.errors.PermanentError` naming the router, backend and server; a refused
  connection, a missing socket file, a timeout, a reset or an empty answer (e.g. during a
  restart) is a :class:`~cutover.errors.TransientError` naming the router and the address.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import math
import re
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Self

from pydantic import field_validator, model_validator

from cutover.core.model import Color, other_color
from cutover.core.weights import effective_share, split_weights
from cutover.errors import AdapterError, PermanentError, TransientError
from cutover.resources import Resources, Shared
from cutover.routers.base import Reading, RouterSpecBase, RouterState

__all__ = [
    "DYNAMIC_ALGORITHMS",
    "MAX_CONNECTIONS",
    "READ_SPACING",
    "RUNTIME_APIS",
    "HAProxyRouter",
    "HAProxySpec",
    "RuntimeAPI",
    "RuntimeAPIs",
    "RuntimeAddress",
    "parse_runtime_api",
]

#: ``balance`` algorithms (as ``show stat`` names them) whose split the runtime weights set.
DYNAMIC_ALGORITHMS = frozenset({"roundrobin", "leastconn", "random", "unknown"})
_WHY_REFUSED = {
    "static-rr": "static-rr only accepts runtime weights 0% and 100%",
    "first": "'first' fills servers in order; weights do not split traffic",
    "none": "the backend has no load-balancing algorithm",
}
_HASHED = frozenset({"source", "uri", "url_param", "hdr", "rdp-cookie", "hash"})

# srv_admin_state bits (HAProxy include/haproxy/server-t.h, "show servers state" in the guide)
_ADMIN_MAINT = 0x01 | 0x02 | 0x04 | 0x20  # forced, inherited, config, resolution
_ADMIN_DRAIN = 0x08 | 0x10  # forced, inherited
_OP_RUNNING = 2

_NAME = re.compile(r"^[A-Za-z0-9_.:-]+$")
_SEVERITY = re.compile(r"^\[(\d)\]: ?")
_MAX_LINE = 8000  # HAProxy reads one line into a buffer of tune.bufsize (16 kB by default)

#: Connections open at once to one runtime API address, across all routers of a daemon: a
#: stats socket accepts ``stats maxconn`` of them (10 by default) and resets the others.
MAX_CONNECTIONS = 8
#: Batches of coalesced reads of one address are sent at most this often (20 per second).
READ_SPACING = 0.05


@dataclass(frozen=True)
class RuntimeAddress:
    """A parsed ``runtime_api``: a unix socket path, or a TCP host and port."""

    scheme: Literal["unix", "tcp"]
    path: str = ""
    host: str = ""
    port: int = 0

    def __str__(self) -> str:
        if self.scheme == "unix":
            return f"unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp:{host}:{self.port}"


def parse_runtime_api(value: str) -> RuntimeAddress:
    """``unix:<path>`` or ``tcp:host:port`` (IPv6 as ``tcp:[::1]:9999``); ``ValueError`` else."""
    hint = "runtime_api must be 'unix:/path/to/admin.sock' or 'tcp:host:port'"
    if value.startswith("unix:"):
        path = value[len("unix:") :]
        if not path.strip():
            raise ValueError(f"{hint}; got {value!r} (no socket path)")
        return RuntimeAddress("unix", path=path)  # a relative path is relative to the cwd
    if value.startswith("tcp:"):
        host, sep, port_text = value[len("tcp:") :].rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"{hint}; got {value!r} (need a host and a port 1..65535)")
        return RuntimeAddress("tcp", host=host, port=int(port_text))
    raise ValueError(f"{hint}; got {value!r}")


class HAProxySpec(RouterSpecBase):
    """``type: haproxy``: one backend, its blue and green servers, and the runtime API address."""

    type: Literal["haproxy"]
    runtime_api: str
    backend: str

    @field_validator("runtime_api")
    @classmethod
    def _check_runtime_api(cls, value: str) -> str:
        parse_runtime_api(value)
        return value

    @field_validator("backend")
    @classmethod
    def _check_backend(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(
                f"backend {value!r} is not a valid HAProxy name (letters, digits, '_.:-')"
            )
        return value

    @model_validator(mode="after")
    def _check_servers(self) -> HAProxySpec:
        for server in (*self.blue, *self.green):
            if not _NAME.match(server):
                raise ValueError(
                    f"server {server!r} is not a valid HAProxy name (letters, digits, '_.:-')"
                )
        for color, servers in (("blue", self.blue), ("green", self.green)):
            dupes = sorted({s for s in servers if servers.count(s) > 1})
            if dupes:
                raise ValueError(f"{color} lists server(s) twice: {', '.join(dupes)}")
        both = sorted(set(self.blue) & set(self.green))
        if both:
            raise ValueError(f"server(s) in both blue and green: {', '.join(both)}")
        return self

    def resolve_paths(self, resolve: Callable[[str], str]) -> Self:
        if not self.runtime_api.startswith("unix:"):
            return self
        return self.model_copy(
            update={"runtime_api": "unix:" + resolve(self.runtime_api.removeprefix("unix:"))}
        )

    def claims(self) -> set[str]:
        return {
            f"haproxy:{self.runtime_api}:{self.backend}/{server}"
            for server in (*self.blue, *self.green)
        }

    def build(self, *, new: Color, resources: Resources) -> HAProxyRouter:
        return HAProxyRouter(self, new=new, clients=resources.get(RUNTIME_APIS))


class RuntimeAPI:
    """The HAProxy runtime API client of one address, shared by every router of a daemon.

    :meth:`run` sends ``set severity-output number; <cmd>; <cmd>…`` as one line on its own
    connection and returns each command's answer (``""`` for a silent success);
    :meth:`servers_state` reads one backend's ``show servers state``, coalesced with other
    routers' reads. Connection problems raise :class:`TransientError` naming the address (the
    router adds its own name); interpreting the answers is the caller's business.

    It holds no connection between calls, so a router's ``aclose`` has nothing to release here,
    and while idle nothing loop-bound either: the semaphore lives for one busy period, a read
    batch until it is answered. Get it from the daemon's :class:`RuntimeAPIs`, never build one
    per router: the bound only holds if every router of an address shares it.
    """

    def __init__(self, target: RuntimeAddress) -> None:
        self.address = str(target)
        self._target = target
        self._gate: asyncio.Semaphore | None = None
        self._users = 0  # calls holding or waiting for a connection slot
        self._batch: _ReadBatch | None = None  # reads asked for and not yet sent
        self._last_read = -math.inf  # loop time the last batch was sent
        self._unanswered: set[_ReadBatch] = set()  # batches waiting to be sent or answered

    def cancel_reads(self) -> None:
        """Stop the reads not answered yet: their askers get a TransientError."""
        for batch in list(self._unanswered):
            batch.cancel()
            # a task cancelled before it ran never reaches its ``finally``: answer here too
            self._answer_cancelled(batch)

    async def run(self, commands: Sequence[str], *, within: float) -> list[str]:
        """One line, one connection; ``within`` seconds bound waiting for a free connection too."""
        if not commands:
            return []
        line = "; ".join(["set severity-output number", *commands])
        where = f"HAProxy runtime API {self.address}"
        admitted = False  # to one of the connections
        try:
            async with asyncio.timeout(within), self._slot():
                admitted = True
                text = await self._roundtrip(line, within)
        except TimeoutError as exc:
            queued = "" if admitted else f" (all {MAX_CONNECTIONS} connections to it were busy)"
            raise TransientError(f"{where}: no answer within {within:g}s{queued}") from exc
        answers = split_answers(text)
        if not answers:
            raise TransientError(f"{where} closed the connection without an answer")
        if answers[0]:
            raise PermanentError(
                f"{where} refused 'set severity-output number': {strip_severity(answers[0])}"
            )
        answers = answers[1:]
        if len(answers) < len(commands):
            # a line cut short: report an error HAProxy gave, else treat as a broken connection
            errors = [a for a in answers if a]
            if errors:
                raise PermanentError(f"{where}: {strip_severity(errors[0])}")
            raise TransientError(
                f"{where} answered {len(answers)} of {len(commands)} commands (connection cut?)"
            )
        return answers[: len(commands)]

    async def servers_state(self, backend: str, *, within: float) -> str:
        """The answer to ``show servers state <backend>``, read after this call started.

        Reads asked while no batch is waiting to be sent start one; the batch is sent at once,
        or :data:`READ_SPACING` after the previous batch, and every read asked until then joins
        it: one line ``show servers state b1; show servers state b2; …`` answers them all. A
        read never joins a batch already sent, so it sees every write finished before it was
        asked. The batch waits as long as the most patient of its askers."""
        batch = self._batch
        if batch is None:
            batch = self._batch = _ReadBatch(asyncio.get_running_loop().create_future())
            batch.task = asyncio.create_task(self._send(batch), name=f"read {self.address}")
            self._unanswered.add(batch)
        batch.backends.add(backend)
        batch.within = max(batch.within, within)
        batch.waiters += 1
        try:
            result = await asyncio.shield(batch.answers)
        except asyncio.CancelledError:
            batch.waiters -= 1
            if not batch.waiters:  # nobody waits for it any more
                if self._batch is batch:
                    self._batch = None
                batch.cancel()
            raise
        if isinstance(result, AdapterError):  # a fresh exception per asker
            raise type(result)(str(result)) from result
        return result[backend]

    async def _send(self, batch: _ReadBatch) -> None:
        loop = asyncio.get_running_loop()
        try:
            wait = self._last_read + READ_SPACING - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if self._batch is batch:
                self._batch = None  # reads asked from now on go to the next batch
            self._last_read = loop.time()
            backends = sorted(batch.backends)
            answers: list[str] = []
            for chunk in _chunks([f"show servers state {b}" for b in backends]):
                answers += await self.run(chunk, within=batch.within)
            batch.answers.set_result(dict(zip(backends, answers, strict=True)))
        except AdapterError as exc:
            batch.answers.set_result(exc)
        finally:
            self._unanswered.discard(batch)
            if self._batch is batch:
                self._batch = None
            self._answer_cancelled(batch)

    def _answer_cancelled(self, batch: _ReadBatch) -> None:
        if not batch.answers.done():
            batch.answers.set_result(
                TransientError(f"HAProxy runtime API {self.address}: the read was cancelled")
            )

    @contextlib.asynccontextmanager
    async def _slot(self) -> AsyncIterator[None]:
        """One of :data:`MAX_CONNECTIONS` connections (a new semaphore per busy period)."""
        if self._gate is None:
            self._gate = asyncio.Semaphore(MAX_CONNECTIONS)
        gate = self._gate
        self._users += 1
        try:
            async with gate:
                yield
        finally:
            self._users -= 1
            if not self._users:
                self._gate = None

    async def _roundtrip(self, line: str, within: float) -> str:
        where = f"HAProxy runtime API {self.address}"
        data = (line + "\n").encode()
        try:
            if self._target.scheme == "unix":
                answer = await self._unix_roundtrip(data)
            else:
                answer = await self._tcp_roundtrip(data, within)
        except FileNotFoundError as exc:
            raise TransientError(f"{where}: socket file not found (is HAProxy running?)") from exc
        except ConnectionRefusedError as exc:
            raise TransientError(f"{where}: connection refused (is HAProxy running?)") from exc
        except PermissionError as exc:
            raise PermanentError(f"{where}: permission denied on the socket") from exc
        except (ConnectionError, OSError) as exc:
            raise TransientError(f"{where}: {type(exc).__name__}: {exc}") from exc
        return answer.decode("utf-8", errors="replace")

    async def _unix_roundtrip(self, data: bytes) -> bytes:
        # the loop's socket calls, not streams: no transport to set up and tear down, half
        # the time of a call on a local socket (and of a rollback's read-back with it)
        loop = asyncio.get_running_loop()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.setblocking(False)
            await loop.sock_connect(sock, self._target.path)
            await loop.sock_sendall(sock, data)
            sock.shutdown(socket.SHUT_WR)
            chunks = []
            while chunk := await loop.sock_recv(sock, 65536):  # HAProxy closes after the line
                chunks.append(chunk)
        return b"".join(chunks)

    async def _tcp_roundtrip(self, data: bytes, within: float) -> bytes:
        reader, writer = await asyncio.open_connection(self._target.host, self._target.port)
        try:
            writer.write(data)
            writer.write_eof()
            await writer.drain()
            return await reader.read()  # HAProxy closes after answering the line
        finally:
            writer.close()
            with contextlib.suppress(Exception):  # also a TimeoutError: never hang here
                async with asyncio.timeout(within):
                    await writer.wait_closed()


@dataclass(eq=False)
class _ReadBatch:
    """Reads of servers' state asked for together (see :meth:`RuntimeAPI.servers_state`)."""

    answers: asyncio.Future[dict[str, str] | AdapterError]
    backends: set[str] = field(default_factory=set)
    within: float = 0.0
    waiters: int = 0
    task: asyncio.Task[None] | None = None

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()


class RuntimeAPIs:
    """The daemon's :class:`RuntimeAPI` clients, one per address, made when first asked for."""

    def __init__(self) -> None:
        self._clients: dict[RuntimeAddress, RuntimeAPI] = {}

    def of(self, target: RuntimeAddress) -> RuntimeAPI:
        client = self._clients.get(target)
        if client is None:
            client = self._clients[target] = RuntimeAPI(target)
        return client

    async def aclose(self) -> None:
        """Stop the reads not answered yet (the clients keep no connection between calls)."""
        clients, self._clients = self._clients, {}
        for client in clients.values():
            client.cancel_reads()


#: The HAProxy runtime API clients every router (and a check reading HAProxy) shares.
RUNTIME_APIS: Shared[RuntimeAPIs] = Shared(
    "HAProxy runtime API clients", RuntimeAPIs, RuntimeAPIs.aclose
)


def split_answers(text: str) -> list[str]:
    """Cut the reply to one line of ``;``-joined commands into one answer per command.

    Each answer ends with an empty line (a silent success is just that empty line); a last
    answer cut short by a closed connection is kept as it is.
    """
    answers: list[str] = []
    current: list[str] = []
    lines = text.split("\n")
    for line in lines[:-1]:
        if line:
            current.append(line)
        else:
            answers.append("\n".join(current))
            current = []
    if current or lines[-1]:
        answers.append("\n".join([*current, lines[-1]]).strip("\n"))
    return answers


def strip_severity(answer: str) -> str:
    """``"[3]: No such server."`` -> ``"No such server."``."""
    return _SEVERITY.sub("", answer.strip()).strip()


def _is_error(answer: str) -> bool:
    """An answer of a data command (``show …``) that is a message instead of data."""
    return bool(_SEVERITY.match(answer))


@dataclass(frozen=True)
class _Server:
    name: str
    op_state: int
    admin_state: int
    uweight: int
    iweight: int

    @property
    def up(self) -> bool:
        return self.op_state == _OP_RUNNING

    @property
    def maint(self) -> bool:
        return bool(self.admin_state & _ADMIN_MAINT)

    @property
    def drain(self) -> bool:
        return bool(self.admin_state & _ADMIN_DRAIN)

    @property
    def state(self) -> str:
        if self.maint:
            return "maint"
        if self.drain:
            return "drain"
        return f"w{self.uweight}"


def _parse_servers_state(answer: str) -> dict[str, _Server]:
    """``show servers state <backend>`` (format version 1) -> servers by name."""
    lines = [line for line in answer.splitlines() if line.strip()]
    if not lines or lines[0].strip() != "1":
        raise ValueError(f"unexpected 'show servers state' answer: {answer[:200]!r}")
    header: list[str] = []
    servers: dict[str, _Server] = {}
    for line in lines[1:]:
        if line.startswith("#"):
            header = line.lstrip("#").split()
            continue
        row = dict(zip(header, line.split(), strict=False))
        try:
            servers[row["srv_name"]] = _Server(
                name=row["srv_name"],
                op_state=int(row["srv_op_state"]),
                admin_state=int(row["srv_admin_state"]),
                uweight=int(row["srv_uweight"]),
                iweight=int(row["srv_iweight"]),
            )
        except (KeyError, ValueError) as exc:
            raise ValueError(f"unexpected 'show servers state' row: {line[:200]!r}") from exc
    return servers


def _parse_stat(answer: str) -> list[dict[str, str]]:
    """``show stat …`` CSV (header line starts with ``# ``) -> rows as dicts."""
    text = answer.lstrip()
    if text.startswith("# "):
        text = text[2:]
    return list(csv.DictReader(text.splitlines()))


class HAProxyRouter:
    """Sets and reads the blue/green split of one HAProxy backend (see the module docstring).

    ``expected`` needs the servers' configured weights, which :meth:`preflight`,
    :meth:`observe` and :meth:`apply` read from HAProxy; before any of them ran it raises
    :class:`PermanentError`.
    """

    def __init__(self, spec: HAProxySpec, *, new: Color, clients: RuntimeAPIs) -> None:
        self._spec = spec
        self._new: tuple[str, ...] = tuple(spec.green if new == "green" else spec.blue)
        self._old: tuple[str, ...] = tuple(spec.blue if new == "green" else spec.green)
        self._new_color: Color = new
        self._who = f"router {spec.name!r}"
        self._api = clients.of(parse_runtime_api(spec.runtime_api))
        self._iweights: dict[str, int] | None = None

    @property
    def name(self) -> str:
        return self._spec.name

    @property
    def kind(self) -> str:
        return "haproxy"

    @property
    def backend(self) -> str:
        return self._spec.backend

    @property
    def configured_weights(self) -> dict[str, int] | None:
        """The servers' configured weights (``srv_iweight``) as last read, or ``None``."""
        return None if self._iweights is None else dict(self._iweights)

    # --- pure ---------------------------------------------------------------------------

    def weights(self, share: int) -> dict[str, int]:
        """The absolute weight of every listed server at ``share`` (see core.weights)."""
        if self._iweights is None:
            raise PermanentError(
                f"{self._who}: the configured weights of backend {self.backend!r} are not"
                " known yet (run preflight() or observe() first)"
            )
        iw = self._iweights
        return split_weights(
            share, old=[(s, iw[s]) for s in self._old], new=[(s, iw[s]) for s in self._new]
        )

    def expected(self, share: int, *, evacuate: bool = False) -> RouterState:
        weights = self.weights(share)
        return {
            server: "maint" if evacuate and server in self._new else f"w{weights[server]}"
            for server in (*self._old, *self._new)
        }

    # --- I/O ----------------------------------------------------------------------------

    async def preflight(self) -> None:
        bk = self.backend
        level, stat, state = await self._run(
            ["show cli level", f"show stat {bk} 6 -1", f"show servers state {bk}"]
        )
        level = strip_severity(level)
        if level != "admin":
            raise PermanentError(
                f"{self._who}: HAProxy runtime API {self._spec.runtime_api} is at level"
                f" {level!r}; setting weights needs 'admin' (stats socket … level admin)"
            )
        servers = self._servers_from(state)
        missing = [s for s in (*self._old, *self._new) if s not in servers]
        if missing:
            raise PermanentError(
                f"{self._who}: HAProxy backend {bk!r} has no server(s) {', '.join(missing)}"
                f" (it has: {', '.join(servers) or 'none'})"
            )
        if _is_error(stat):
            raise PermanentError(f"{self._who}: backend {bk!r}: {strip_severity(stat)}")
        rows = _parse_stat(stat)
        backend_rows = [r for r in rows if r.get("svname") == "BACKEND"]
        if not backend_rows or "algo" not in backend_rows[0]:
            raise PermanentError(
                f"{self._who}: cannot read the balance algorithm of backend {bk!r} from 'show stat'"
            )
        algo = backend_rows[0]["algo"] or "none"
        if algo not in DYNAMIC_ALGORITHMS:
            why = _WHY_REFUSED.get(algo) or (
                f"'{algo}' is hash-based: the key, not the weights, picks the server"
                if algo in _HASHED
                else f"'{algo}' is not one where runtime weights set the split"
            )
            raise PermanentError(
                f"{self._who}: backend {bk!r} uses 'balance {algo}', which cannot be driven by"
                f" runtime weights ({why}); use roundrobin, leastconn or random"
            )
        listed = set(self._old) | set(self._new)
        extra = [
            r["svname"]
            for r in rows
            if r.get("svname") not in (None, "BACKEND", "FRONTEND")
            and r["svname"] not in listed
            and r.get("bck") != "1"
            and r["svname"] in servers
            and servers[r["svname"]].uweight > 0
            and not servers[r["svname"]].maint
        ]
        if extra:
            raise PermanentError(
                f"{self._who}: backend {bk!r} has server(s) {', '.join(extra)} in neither blue"
                " nor green that can take traffic; list them, set their weight to 0, or put"
                " them in maint or backup"
            )
        down = [s for s in self._old if not servers[s].up]
        if down:
            raise TransientError(
                f"{self._who}: backend {bk!r}: live ({other_color(self._new_color)}) server(s)"
                f" {', '.join(down)} not UP"
            )

    async def apply(self, share: int, *, evacuate: bool = False) -> None:
        await self._write(share, evacuate=evacuate, then=[])

    async def apply_and_observe(self, share: int, *, evacuate: bool = False) -> Reading:
        """:meth:`apply` and :meth:`observe` in one round trip: ``show servers state`` ends the
        line of ``set server`` commands, and HAProxy runs a line's commands in order (management
        guide 9.3), so it reads what they wrote. A failed write raises as in :meth:`apply`."""
        (answer,) = await self._write(
            share, evacuate=evacuate, then=[f"show servers state {self.backend}"]
        )
        return self._reading(self._listed_servers(answer))

    async def observe(self) -> Reading:
        return self._reading(await self._read())

    async def lower_ttl(self) -> float:
        return 0.0  # a load balancer's change takes effect at once

    async def aclose(self) -> None:
        """Nothing to release: the shared client holds no connection between calls."""

    # --- helpers ------------------------------------------------------------------------

    async def _run(self, commands: Sequence[str]) -> list[str]:
        """One line on the shared client of the address; errors name this router."""
        try:
            return await self._api.run(commands, within=self._spec.timeout)
        except AdapterError as exc:
            raise type(exc)(f"{self._who}: {exc}") from exc

    async def _write(self, share: int, *, evacuate: bool, then: list[str]) -> list[str]:
        """Set every listed server for ``share``, then run ``then`` on the same (last) line;
        returns the answers of ``then``."""
        if self._iweights is None:
            await self._read()
        weights = self.weights(share)
        bk = self.backend
        first: list[str] = []
        last: list[str] = []
        for server in (*self._old, *self._new):
            state = "maint" if evacuate and server in self._new else "ready"
            cmds = [
                f"set server {bk}/{server} weight {weights[server]}",
                f"set server {bk}/{server} state {state}",
            ]
            (first if state == "ready" and weights[server] > 0 else last).extend(cmds)
        writes = len(first) + len(last)
        answers: list[str] = []
        for chunk in _chunks(first + last + then):
            for command, answer in zip(chunk, await self._run(chunk), strict=True):
                if len(answers) < writes and answer:
                    server = command.split()[2].partition("/")[2]
                    raise PermanentError(
                        f"{self._who}: HAProxy backend {bk!r}, server {server!r}:"
                        f" '{command}' failed: {strip_severity(answer)}"
                    )
                answers.append(answer)
        return answers[writes:]

    async def _read(self) -> dict[str, _Server]:
        try:
            answer = await self._api.servers_state(self.backend, within=self._spec.timeout)
        except AdapterError as exc:
            raise type(exc)(f"{self._who}: {exc}") from exc
        return self._listed_servers(answer)

    def _listed_servers(self, answer: str) -> dict[str, _Server]:
        servers = self._servers_from(answer)
        missing = [s for s in (*self._old, *self._new) if s not in servers]
        if missing:
            raise PermanentError(
                f"{self._who}: HAProxy backend {self.backend!r} has no server(s)"
                f" {', '.join(missing)}"
            )
        return servers

    def _reading(self, servers: dict[str, _Server]) -> Reading:
        mine = [servers[s] for s in (*self._old, *self._new)]
        share = effective_share(
            (s.name in self._new, s.uweight, s.up, s.maint or s.drain) for s in mine
        )
        return Reading(
            share=share,
            state={s.name: s.state for s in mine},
            detail=self._detail(servers),
        )

    def _servers_from(self, answer: str) -> dict[str, _Server]:
        if _is_error(answer):
            raise PermanentError(
                f"{self._who}: HAProxy backend {self.backend!r}: {strip_severity(answer)}"
                f" (runtime API {self._spec.runtime_api})"
            )
        try:
            servers = _parse_servers_state(answer)
        except ValueError as exc:
            raise PermanentError(f"{self._who}: backend {self.backend!r}: {exc}") from exc
        listed = (*self._old, *self._new)
        if all(s in servers for s in listed):
            self._iweights = {s: servers[s].iweight for s in listed}
        return servers

    def _detail(self, servers: dict[str, _Server]) -> str:
        parts = []
        for color, names in (
            (other_color(self._new_color), self._old),
            (self._new_color, self._new),
        ):
            group = [servers[n] for n in names]
            up = sum(1 for s in group if s.up)
            text = f"{color} {up}/{len(group)} up"
            maint = sum(1 for s in group if s.maint)
            drain = sum(1 for s in group if s.drain and not s.maint)
            extras = [f"{maint} maint"] * bool(maint) + [f"{drain} drain"] * bool(drain)
            parts.append(text + (f" ({', '.join(extras)})" if extras else ""))
        return ", ".join(parts)


def _chunks(commands: list[str]) -> list[list[str]]:
    """Group commands into lines short enough for HAProxy's line buffer (usually one)."""
    chunks: list[list[str]] = [[]]
    size = 0
    for command in commands:
        if chunks[-1] and size + len(command) + 2 > _MAX_LINE:
            chunks.append([])
            size = 0
        chunks[-1].append(command)
        size += len(command) + 2
    return chunks
