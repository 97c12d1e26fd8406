"""SQLite implementation of :class:`cutover.store.base.StateStore`: the single-node default.

Why it is shaped so (recipes/state-and-ha.md, section 3, verified there by SIGKILL tests):

* **WAL + ``synchronous=FULL`` on every connection.** A commit is durable once ``COMMIT``
  returns, which matters because the engine acts on routers right after persisting a step.
  ``journal_mode`` sticks to the file; ``synchronous`` does not, so it is set at every open.
* **``isolation_level=None`` with explicit ``BEGIN IMMEDIATE`` / ``COMMIT`` / ``ROLLBACK``.**
  Python 3.11's implicit transactions are off; ``BEGIN IMMEDIATE`` takes the write lock up
  front, so the "one active cutover per service" check in :meth:`SqliteStore.create` and the
  revision guard in :meth:`SqliteStore.save` run in the same serialized transaction as the
  write (20 concurrent starts get exactly one winner), and a read is never upgraded into a
  write that could hit ``SQLITE_BUSY``.
* **One connection, one dedicated thread, one hop per call.** All sqlite3 work runs on a
  1-worker :class:`~concurrent.futures.ThreadPoolExecutor`; each public coroutine submits one
  function that does the whole transaction. That keeps ``BEGIN … COMMIT`` together when many
  asyncio tasks share the store and costs one thread hop instead of one per statement.
* **A process lock on ``<path>.lock``** (``fcntl.flock``, held for the store's lifetime, pid
  written inside): a second daemon pointed at the same file refuses to start instead of
  interleaving its writes. The kernel drops the lock when the process dies, so a restart
  after a crash is never blocked by a stale lock file.
* **Errors are translated** into :class:`~cutover.errors.StoreError` with the path and a plain
  reason (disk full, read-only, corrupt, locked, …); the sqlite3 exception stays only as
  ``__cause__``.
* **A failed write is a visible fault** (PRODUCT.md, Store faults are visible): it sets
  :attr:`SqliteStore.write_error` until a write succeeds, calls ``on_write_error`` (the
  daemon's ``cutover_store_write_errors_total``) and logs a paced alarm (one line a minute with
  a count, :class:`~cutover.observability.alarms.PacedAlarm`). A conflict or a stale revision
  is an answer, not a fault. A database file removed or replaced under the open connection
  ("lost": SQLite would go on writing to the unlinked file, gone at the next start) fails every
  write until the daemon is restarted on a database that is there.

A cancelled caller does not cancel the transaction already handed to the thread: a
cancelled ``save`` may still have committed. The revision guard makes the next ``save`` from
the stale copy fail with :class:`~cutover.errors.StaleRevisionError`, so the caller re-reads.

SQLite's WAL needs shared memory on one host: this store cannot back several replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, TypeVar

from cutover.core.model import Cutover, Event, Status
from cutover.errors import ConflictError, StaleRevisionError, StoreError
from cutover.observability.alarms import PacedAlarm
from cutover.store.base import StateStore

__all__ = ["SCHEMA_VERSION", "SqliteStore"]

#: Version of the table layout, kept in ``meta``; a newer file is refused, not misread.
#: 2 added ``notifiers`` and ``deliveries`` (webhook delivery cursors); a version-1 file gets
#: them at its first open by this daemon (every table is ``CREATE … IF NOT EXISTS``).
SCHEMA_VERSION = 2

_T = TypeVar("_T")

_BUSY_TIMEOUT_S = 5.0
_TERMINAL = tuple(s.value for s in Status if s.terminal)  # completed, rolled_back, refused
_ACTIVE_SQL = "status NOT IN ({})".format(", ".join(f"'{v}'" for v in _TERMINAL))

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS cutovers (
    id         TEXT PRIMARY KEY,
    service    TEXT NOT NULL,
    status     TEXT NOT NULL,
    kind       TEXT NOT NULL,
    revision   INTEGER NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    body       TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS cutovers_service_created ON cutovers (service, created_at);
CREATE INDEX IF NOT EXISTS cutovers_active ON cutovers (service) WHERE {_ACTIVE_SQL};
CREATE TABLE IF NOT EXISTS events (
    cutover_id TEXT NOT NULL REFERENCES cutovers (id),
    seq        INTEGER NOT NULL,
    kind       TEXT NOT NULL,
    at         REAL NOT NULL,
    message    TEXT NOT NULL,
    data       TEXT NOT NULL,
    PRIMARY KEY (cutover_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS notifiers (
    notifier TEXT PRIMARY KEY
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS deliveries (
    notifier   TEXT NOT NULL REFERENCES notifiers (notifier),
    cutover_id TEXT NOT NULL REFERENCES cutovers (id),
    seq        INTEGER NOT NULL,
    PRIMARY KEY (notifier, cutover_id)
) WITHOUT ROWID;
"""

_REASONS: tuple[tuple[str, str], ...] = (
    ("SQLITE_FULL", "the disk (or the database's size limit) is full"),
    ("SQLITE_READONLY", "the database is read-only"),
    ("SQLITE_CORRUPT", "the database file is corrupt"),
    ("SQLITE_NOTADB", "the file is not an SQLite database"),
    ("SQLITE_BUSY", f"the database stayed locked by another process for {_BUSY_TIMEOUT_S:g} s"),
    ("SQLITE_LOCKED", "the database is locked"),
    ("SQLITE_CANTOPEN", "the database file cannot be opened"),
    ("SQLITE_PERM", "permission denied"),
    ("SQLITE_IOERR", "an I/O error occurred"),
)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


class SqliteStore(StateStore):
    """Cutover records and their event journal in one SQLite file at ``path``.

    ``max_page_count`` caps the database size in pages (``PRAGMA max_page_count``, per
    connection, never below the current size); it exists so tests can simulate a full disk.
    """

    def __init__(
        self,
        *,
        path: str,
        max_page_count: int | None = None,
        on_write_error: Callable[[], object] | None = None,
    ) -> None:
        """``on_write_error`` is called (on the store's thread) for each write that fails."""
        self.path = path
        self.lock_path = f"{path}.lock"
        self._max_page_count = max_page_count
        self._on_write_error = on_write_error
        # touched only on the executor's thread, like the connection
        self._write_fault = PacedAlarm(
            message="state store cannot write", cleared="state store writes again"
        )
        self._file_id: tuple[int, int] | None = None  # (st_dev, st_ino) of the file opened
        self._executor: ThreadPoolExecutor | None = None
        self._con: sqlite3.Connection | None = None  # touched only on the executor's thread
        self._lock_fd: int | None = None

    def __repr__(self) -> str:
        return f"SqliteStore(path={self.path!r})"

    # --- lifecycle -----------------------------------------------------------------------

    async def open(self) -> None:
        if self._executor is not None:
            raise StoreError(f"state store {self.path} is already open")
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cutover-sqlite")
        try:
            await self._call(self._open_sync)
        except BaseException:
            await self._shutdown()
            raise

    async def aclose(self) -> None:
        if self._executor is None:
            return
        await self._shutdown()

    async def _shutdown(self) -> None:
        executor = self._executor
        if executor is None:
            return
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(executor, self._close_sync)
        except sqlite3.Error as exc:
            raise self._translate(exc) from exc
        finally:
            self._executor = None
            executor.shutdown(wait=True)  # the queue is empty: the thread exits at once

    def _open_sync(self) -> None:
        self._lock_sync()
        try:
            con = sqlite3.connect(
                self.path,
                timeout=_BUSY_TIMEOUT_S,
                isolation_level=None,
                check_same_thread=True,
            )
            self._con = con
            st = os.stat(self.path)
            self._file_id = (st.st_dev, st.st_ino)
            mode = con.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(
                    f"state store {self.path}: cannot use write-ahead logging "
                    f"(journal_mode is {mode!r}); use a local file system"
                )
            con.execute("PRAGMA synchronous=FULL")
            con.execute(f"PRAGMA busy_timeout={int(_BUSY_TIMEOUT_S * 1000)}")
            con.execute("PRAGMA foreign_keys=ON")
            if self._max_page_count is not None:
                con.execute(f"PRAGMA max_page_count={int(self._max_page_count)}")
            self._migrate(con)
        except sqlite3.Error as exc:
            self._close_sync()
            raise self._translate(exc) from exc
        except BaseException:
            self._close_sync()
            raise

    def _lock_sync(self) -> None:
        try:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreError(
                f"state store {self.path}: cannot create {self.lock_path}: {exc.strerror or exc}"
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            pid = "unknown"
            with contextlib.suppress(OSError):
                pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise StoreError(
                f"state store {self.path} is in use by another cutover daemon (pid {pid})"
            ) from exc
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        except OSError as exc:
            os.close(fd)
            raise StoreError(
                f"state store {self.path}: cannot write {self.lock_path}: {exc.strerror or exc}"
            ) from exc
        self._lock_fd = fd

    def _close_sync(self) -> None:
        con, self._con = self._con, None
        fd, self._lock_fd = self._lock_fd, None
        try:
            if con is not None:
                con.close()
        finally:
            if fd is not None:
                os.close(fd)  # releases the flock; the file stays (deleting it would race)

    def _migrate(self, con: sqlite3.Connection) -> None:
        con.execute("BEGIN IMMEDIATE")
        try:
            # not executescript(): it would COMMIT first; the schema goes in this transaction
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    con.execute(stmt)
            row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                con.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
            elif int(row[0]) > SCHEMA_VERSION:
                raise StoreError(
                    f"state store {self.path} has schema version {row[0]}, newer than this "
                    f"daemon's {SCHEMA_VERSION}; run the newer daemon or another file"
                )
            elif int(row[0]) < SCHEMA_VERSION:  # the new tables were created just above
                con.execute(
                    "UPDATE meta SET value = ? WHERE key = 'schema_version'",
                    (str(SCHEMA_VERSION),),
                )
            con.execute("COMMIT")
        except BaseException:
            _rollback(con)
            raise

    async def set_read_only(self, read_only: bool) -> None:
        """Make the open database refuse writes, or take them again: ``PRAGMA query_only``,
        so every write fails with ``SQLITE_READONLY`` as on a file system remounted read-only.
        How tests make that fault for real (they run as root: file modes stop no write)."""

        def apply() -> None:
            self._connection().execute(f"PRAGMA query_only={int(read_only)}")

        await self._call(apply)

    # --- one hop per call ------------------------------------------------------------------

    async def _call(self, fn: Callable[[], _T]) -> _T:
        executor = self._executor
        if executor is None:
            raise StoreError(f"state store {self.path} is not open")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(executor, fn)
        except sqlite3.Error as exc:
            raise self._translate(exc) from exc

    def _connection(self) -> sqlite3.Connection:
        if self._con is None:
            raise StoreError(f"state store {self.path} is not open")
        return self._con

    def _write(self, body: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``body`` as one ``BEGIN IMMEDIATE … COMMIT`` transaction (on the thread); a
        failure of the store itself is a write fault (see the module's docstring)."""
        con = self._connection()
        lost = self._lost()
        if lost:
            error = StoreError(f"state store {self.path}: {lost}; restart the daemon on it")
            self._write_failed(error)
            raise error
        try:
            con.execute("BEGIN IMMEDIATE")
            try:
                result = body(con)
                con.execute("COMMIT")
            except BaseException:
                _rollback(con)
                raise
        except sqlite3.Error as exc:
            error = self._translate(exc)
            self._write_failed(error)
            raise error from exc
        self._write_fault.clear()
        return result

    def _lost(self) -> str:
        """Why the open database is no longer the file at :attr:`path`, or ""."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return "the database file was removed"
        except OSError as exc:
            return f"the database file cannot be checked ({exc.strerror or exc})"
        if (st.st_dev, st.st_ino) != self._file_id:
            return "the database file was replaced by another file"
        return ""

    def _write_failed(self, error: StoreError) -> None:
        self._write_fault.fault(str(error))
        if self._on_write_error is not None:
            self._on_write_error()

    @property
    def write_error(self) -> str:
        return self._write_fault.error

    async def check_writable(self) -> str:
        if not self.write_error:
            return ""

        def probe(con: sqlite3.Connection) -> None:
            con.execute(
                "INSERT INTO meta (key, value) VALUES ('write_probe', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (repr(time.time()),),  # a new value: the page is written for sure
            )

        with contextlib.suppress(StoreError):
            await self._call(lambda: self._write(probe))
        return self.write_error

    def _translate(self, exc: sqlite3.Error) -> StoreError:
        name = getattr(exc, "sqlite_errorname", "") or type(exc).__name__
        reason = "the database operation failed"
        for prefix, text in _REASONS:
            if name.startswith(prefix):
                reason = text
                break
        return StoreError(f"state store {self.path}: {reason} ({name}: {exc})")

    # --- writes ----------------------------------------------------------------------------

    async def create(self, cutover: Cutover, events: Sequence[Event]) -> Cutover:
        new = replace(cutover, revision=1)
        body = _dumps(new.to_dict())
        rows = _event_rows(events)

        def tx(con: sqlite3.Connection) -> None:
            row = con.execute(
                f"SELECT id, status FROM cutovers WHERE service = ? AND {_ACTIVE_SQL} "
                "ORDER BY created_at DESC, rowid DESC LIMIT 1",
                (new.service,),
            ).fetchone()
            if row is not None:
                raise ConflictError(
                    f"service {new.service!r} already has an active cutover {row[0]} "
                    f"({row[1]}); finish, roll back or abort it first"
                )
            if con.execute("SELECT 1 FROM cutovers WHERE id = ?", (new.id,)).fetchone():
                raise ConflictError(f"a cutover with id {new.id} already exists")
            con.execute(
                "INSERT INTO cutovers (id, service, status, kind, revision, created_at, "
                "updated_at, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    new.id,
                    new.service,
                    new.status.value,
                    new.kind,
                    new.revision,
                    new.created_at,
                    new.updated_at,
                    body,
                ),
            )
            _append(con, new.id, 0, rows)

        await self._call(lambda: self._write(tx))
        return new

    async def save(self, cutover: Cutover, events: Sequence[Event]) -> Cutover:
        new = replace(cutover, revision=cutover.revision + 1)
        body = _dumps(new.to_dict())
        rows = _event_rows(events)

        def tx(con: sqlite3.Connection) -> None:
            cur = con.execute(
                "UPDATE cutovers SET service = ?, status = ?, kind = ?, revision = ?, "
                "created_at = ?, updated_at = ?, body = ? WHERE id = ? AND revision = ?",
                (
                    new.service,
                    new.status.value,
                    new.kind,
                    new.revision,
                    new.created_at,
                    new.updated_at,
                    body,
                    new.id,
                    cutover.revision,
                ),
            )
            if cur.rowcount != 1:
                row = con.execute(
                    "SELECT revision FROM cutovers WHERE id = ?", (new.id,)
                ).fetchone()
                if row is None:
                    raise StaleRevisionError(f"cutover {new.id} is not in the state store")
                raise StaleRevisionError(
                    f"cutover {new.id} changed since it was read: stored revision {row[0]}, "
                    f"this copy has {cutover.revision}"
                )
            (last,) = con.execute(
                "SELECT COALESCE(MAX(seq), 0) FROM events WHERE cutover_id = ?", (new.id,)
            ).fetchone()
            _append(con, new.id, int(last), rows)

        await self._call(lambda: self._write(tx))
        return new

    # --- reads -----------------------------------------------------------------------------

    async def get(self, cutover_id: str) -> Cutover | None:
        def q() -> Cutover | None:
            row = (
                self._connection()
                .execute("SELECT id, revision, body FROM cutovers WHERE id = ?", (cutover_id,))
                .fetchone()
            )
            return None if row is None else self._load(row)

        return await self._call(q)

    async def active(self, service: str | None = None) -> list[Cutover]:
        if service is not None:  # the partial index: no other service's body is decoded
            return await self._query(
                f"SELECT id, revision, body FROM cutovers WHERE service = ? AND {_ACTIVE_SQL} "
                "ORDER BY created_at, rowid",
                (service,),
            )
        return await self._query(
            f"SELECT id, revision, body FROM cutovers WHERE {_ACTIVE_SQL} "
            "ORDER BY created_at, rowid",
            (),
        )

    async def history(self, service: str, limit: int = 50) -> list[Cutover]:
        return await self._query(
            "SELECT id, revision, body FROM cutovers WHERE service = ? "
            "ORDER BY created_at DESC, rowid DESC LIMIT ?",
            (service, limit),
        )

    async def last_switch(self, service: str) -> Cutover | None:
        found = await self._query(
            "SELECT id, revision, body FROM cutovers WHERE service = ? "
            "AND (status = ? OR (kind = 'undo' AND status = ?)) "
            "ORDER BY created_at DESC, rowid DESC LIMIT 1",
            (service, Status.COMPLETED.value, Status.ROLLED_BACK.value),
        )
        return found[0] if found else None

    async def events(self, cutover_id: str, after_seq: int = 0) -> list[Event]:
        def q() -> list[Event]:
            rows = (
                self._connection()
                .execute(
                    "SELECT seq, kind, at, message, data FROM events "
                    "WHERE cutover_id = ? AND seq > ? ORDER BY seq",
                    (cutover_id, after_seq),
                )
                .fetchall()
            )
            return [self._event(cutover_id, *row) for row in rows]

        return await self._call(q)

    # --- delivery cursors --------------------------------------------------------------------

    async def register_notifier(self, notifier: str) -> bool:
        def tx(con: sqlite3.Connection) -> bool:
            if con.execute("SELECT 1 FROM notifiers WHERE notifier = ?", (notifier,)).fetchone():
                return False
            con.execute("INSERT INTO notifiers (notifier) VALUES (?)", (notifier,))
            con.execute(
                "INSERT INTO deliveries (notifier, cutover_id, seq) "
                "SELECT ?, cutover_id, MAX(seq) FROM events GROUP BY cutover_id",
                (notifier,),
            )
            return True

        return await self._call(lambda: self._write(tx))

    async def undelivered(self, notifier: str, limit: int = 100) -> list[tuple[str, Event]]:
        def q() -> list[tuple[str, Event]]:
            rows = (
                self._connection()
                .execute(
                    "SELECT e.cutover_id, e.seq, e.kind, e.at, e.message, e.data "
                    "FROM notifiers n JOIN cutovers c "
                    "LEFT JOIN deliveries d ON d.notifier = n.notifier AND d.cutover_id = c.id "
                    "JOIN events e ON e.cutover_id = c.id AND e.seq > COALESCE(d.seq, 0) "
                    "WHERE n.notifier = ? "
                    "ORDER BY c.created_at, c.rowid, e.seq LIMIT ?",
                    (notifier, limit),
                )
                .fetchall()
            )
            return [(row[0], self._event(row[0], *row[1:])) for row in rows]

        return await self._call(q)

    async def acknowledge(self, notifier: str, cursors: Mapping[str, int]) -> None:
        rows = [(notifier, cutover_id, seq) for cutover_id, seq in cursors.items()]

        def tx(con: sqlite3.Connection) -> None:
            con.executemany(
                "INSERT INTO deliveries (notifier, cutover_id, seq) VALUES (?, ?, ?) "
                "ON CONFLICT (notifier, cutover_id) DO UPDATE SET seq = MAX(seq, excluded.seq)",
                rows,
            )

        if rows:
            await self._call(lambda: self._write(tx))

    async def _query(self, sql: str, params: tuple[Any, ...]) -> list[Cutover]:
        def q() -> list[Cutover]:
            rows = self._connection().execute(sql, params).fetchall()
            return [self._load(row) for row in rows]

        return await self._call(q)

    def _event(
        self, cutover_id: str, seq: int, kind: str, at: float, message: str, data: str
    ) -> Event:
        try:
            parsed = json.loads(data)
        except ValueError as exc:
            raise StoreError(
                f"state store {self.path}: event {seq} of cutover {cutover_id} is unreadable: {exc}"
            ) from exc
        return Event(kind=kind, message=message, at=at, data=parsed, seq=seq)

    def _load(self, row: tuple[Any, ...]) -> Cutover:
        cutover_id, revision, body = row
        try:
            cutover = Cutover.from_dict(json.loads(body))
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreError(
                f"state store {self.path}: record of cutover {cutover_id} is unreadable "
                f"({type(exc).__name__}: {exc})"
            ) from exc
        if cutover.revision != revision:  # the column is what the guard checks: trust it
            cutover = replace(cutover, revision=revision)
        return cutover


def _event_rows(events: Sequence[Event]) -> list[tuple[str, float, str, str]]:
    """Serialize on the caller's side so a bad payload fails before any transaction."""
    rows = []
    for e in events:
        try:
            data = _dumps(e.data)
        except (TypeError, ValueError) as exc:
            raise StoreError(f"event {e.kind!r} has data that is not JSON: {exc}") from exc
        rows.append((e.kind, e.at, e.message, data))
    return rows


def _append(
    con: sqlite3.Connection, cutover_id: str, last_seq: int, rows: list[tuple[str, float, str, str]]
) -> None:
    con.executemany(
        "INSERT INTO events (cutover_id, seq, kind, at, message, data) VALUES (?, ?, ?, ?, ?, ?)",
        [(cutover_id, last_seq + i, *row) for i, row in enumerate(rows, start=1)],
    )


def _rollback(con: sqlite3.Connection) -> None:
    """Undo an open transaction; SQLite may already have rolled back (e.g. on SQLITE_FULL)."""
    if con.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            con.execute("ROLLBACK")
