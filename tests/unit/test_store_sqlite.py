"""SqliteStore: round-trip, revisions, the event journal, the one-active-cutover rule under
concurrency, the process lock, a full disk and reopening."""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from cutover.core.model import (
    CheckPolicy,
    CheckState,
    Cutover,
    Event,
    Measurement,
    Phase,
    Plan,
    RouterStatus,
    Stage,
    Status,
    Verdict,
)
from cutover.errors import ConflictError, StaleRevisionError, StoreError
from cutover.store.sqlite import SCHEMA_VERSION, SqliteStore


def make_cutover(cid: str = "c1", service: str = "shop", created_at: float = 1000.0) -> Cutover:
    return Cutover(
        id=cid,
        service=service,
        from_color="blue",
        to_color="green",
        plan=Plan(
            stages=(Stage(weight=10, hold=30.0), Stage(weight=100, hold=0.0, approval=True)),
            checks=(CheckPolicy(name="errors", window=4, on_error="rollback"),),
            routers=("lb1", "dns"),
            on_drift="reassert",
        ),
        created_at=created_at,
        updated_at=created_at,
    )


def progressed(c: Cutover) -> Cutover:
    """The same cutover with every nested part filled in."""
    m1 = Measurement(verdict=Verdict.PASS, value=0.25, detail="p99 ok", at=1001.5)
    m2 = Measurement(verdict=Verdict.ERROR, value=None, detail="timeout", at=1002.0, counting=False)
    return replace(
        c,
        status=Status.PAUSED,
        paused_from=Status.RUNNING,
        phase=Phase.HOLDING,
        stage_index=1,
        hold_elapsed=12.5,
        checks=(
            CheckState(
                name="errors",
                window=(Verdict.PASS, Verdict.FAIL, Verdict.INCONCLUSIVE),
                consecutive_errors=1,
                latest=Verdict.FAIL,
                last=m2,
                history=(m1, m2),
            ),
        ),
        routers=(
            RouterStatus(name="lb1", kind="haproxy", desired=100, written=100, observed=99.5),
            RouterStatus(name="dns", kind="route53", desired=100, drift=True, error="timeout"),
        ),
        reason="operator pause",
        restarts=(1001.0, 1002.5),
        updated_at=1003.0,
    )


def ev(kind: str, n: int = 0) -> Event:
    return Event(kind=kind, message=f"{kind} {n}", at=1000.0 + n, data={"n": n, "list": [1, "x"]})


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(path=str(tmp_path / "state" / "cutover.db"))
    await s.open()
    try:
        yield s
    finally:
        await s.aclose()


async def test_round_trip_with_nested_parts(store: SqliteStore) -> None:
    created = await store.create(make_cutover(), [ev("started")])
    assert created.revision == 1
    assert await store.get("c1") == created
    saved = await store.save(progressed(created), [])
    assert saved.revision == 2
    got = await store.get("c1")
    assert got == saved
    assert got is not None and got.checks[0].history[1].value is None
    assert await store.get("nope") is None


async def test_body_holds_the_stored_revision(store: SqliteStore) -> None:
    c = await store.create(make_cutover(), [])
    await store.save(c, [])
    with sqlite3.connect(store.path) as con:
        rev, body = con.execute("SELECT revision, body FROM cutovers").fetchone()
    con.close()
    assert rev == 2
    assert '"revision":2' in body


async def test_revision_increments_and_stale_save_raises(store: SqliteStore) -> None:
    c1 = await store.create(make_cutover(), [])
    c2 = await store.save(replace(c1, hold_elapsed=1.0), [ev("tick", 1)])
    c3 = await store.save(replace(c2, hold_elapsed=2.0), [])
    assert (c1.revision, c2.revision, c3.revision) == (1, 2, 3)
    with pytest.raises(StaleRevisionError, match="stored revision 3"):
        await store.save(replace(c2, hold_elapsed=99.0), [ev("lost", 2)])
    got = await store.get("c1")
    assert got is not None and got.hold_elapsed == 2.0 and got.revision == 3
    assert [e.kind for e in await store.events("c1")] == ["tick"]  # the stale event is gone
    with pytest.raises(StaleRevisionError, match="not in the state store"):
        await store.save(make_cutover("ghost"), [])


async def test_events_get_consecutive_seq_per_cutover(store: SqliteStore) -> None:
    a = await store.create(make_cutover("a", "shop"), [ev("started", 0), ev("preflight", 1)])
    b = await store.create(make_cutover("b", "cart"), [ev("started", 0)])
    a = await store.save(a, [ev("stage", 2)])
    b = await store.save(b, [ev("stage", 1), ev("hold", 2)])
    a = await store.save(a, [])
    a = await store.save(a, [ev("done", 3), ev("x", 4), ev("y", 5)])

    events_a = await store.events("a")
    assert [e.seq for e in events_a] == [1, 2, 3, 4, 5, 6]
    assert [e.kind for e in events_a] == ["started", "preflight", "stage", "done", "x", "y"]
    assert events_a[0] == replace(ev("started", 0), seq=1)
    assert [e.seq for e in await store.events("b")] == [1, 2, 3]
    assert [e.seq for e in await store.events("a", after_seq=4)] == [5, 6]
    assert await store.events("a", after_seq=6) == []
    assert await store.events("missing") == []


async def test_create_conflicts_while_active_and_allowed_after_completion(
    store: SqliteStore,
) -> None:
    first = await store.create(make_cutover("c1"), [ev("started")])
    with pytest.raises(ConflictError) as info:
        await store.create(make_cutover("c2", created_at=2000.0), [ev("started")])
    assert "'shop'" in str(info.value) and "c1" in str(info.value)
    assert info.value.status == 409
    assert await store.get("c2") is None and await store.events("c2") == []

    failed = await store.save(replace(first, status=Status.FAILED), [])
    with pytest.raises(ConflictError):  # failed still owns the service
        await store.create(make_cutover("c2", created_at=2000.0), [])

    await store.save(replace(failed, status=Status.COMPLETED), [])
    c2 = await store.create(make_cutover("c2", created_at=2000.0), [ev("started")])
    assert c2.revision == 1
    # another service is never blocked, and a duplicate id is refused
    await store.create(make_cutover("c3", service="cart"), [])
    with pytest.raises(ConflictError, match="already exists"):
        await store.create(make_cutover("c3", service="other"), [])


async def test_twenty_concurrent_creates_have_one_winner(store: SqliteStore) -> None:
    results = await asyncio.gather(
        *(store.create(make_cutover(f"c{i}"), [ev("started")]) for i in range(20)),
        return_exceptions=True,
    )
    winners = [r for r in results if isinstance(r, Cutover)]
    losers = [r for r in results if isinstance(r, ConflictError)]
    assert len(winners) == 1 and len(losers) == 19
    assert all(winners[0].id in str(e) for e in losers)
    assert [c.id for c in await store.active()] == [winners[0].id]
    assert len(await store.history("shop")) == 1


async def test_create_waits_for_a_foreign_writer(tmp_path: Path) -> None:
    """BEGIN IMMEDIATE serializes against other connections to the file, not only the thread."""
    s = SqliteStore(path=str(tmp_path / "c.db"))
    await s.open()
    try:
        await s.create(make_cutover("mine"), [])
        other = sqlite3.connect(s.path, isolation_level=None, timeout=5.0)
        try:
            other.execute("BEGIN IMMEDIATE")
            # while another connection holds the write lock, the store's create waits for it
            task = asyncio.ensure_future(s.create(make_cutover("x", service="cart"), []))
            await asyncio.sleep(0.2)
            assert not task.done()
            other.execute("COMMIT")
            assert (await task).revision == 1
        finally:
            other.close()
    finally:
        await s.aclose()


async def test_active_history_last_switch(store: SqliteStore) -> None:
    c1 = await store.create(make_cutover("c1", created_at=1000.0), [])
    await store.save(replace(c1, status=Status.COMPLETED), [])
    c2 = await store.create(make_cutover("c2", created_at=2000.0), [])
    await store.save(replace(c2, status=Status.ROLLED_BACK), [])
    c3 = await store.create(make_cutover("c3", created_at=3000.0), [])
    await store.save(replace(c3, status=Status.COMPLETED), [])
    c4 = await store.create(make_cutover("c4", created_at=4000.0), [])
    c4 = await store.save(replace(c4, status=Status.AWAITING_APPROVAL), [])
    other = await store.create(make_cutover("o1", service="cart", created_at=1500.0), [])
    other = await store.save(replace(other, status=Status.FAILED), [])

    assert [c.id for c in await store.active()] == ["o1", "c4"]
    assert [c.id for c in await store.active("shop")] == ["c4"]
    assert [c.id for c in await store.active("cart")] == ["o1"]
    assert await store.active("nobody") == []
    assert [c.id for c in await store.history("shop")] == ["c4", "c3", "c2", "c1"]
    assert [c.id for c in await store.history("shop", limit=2)] == ["c4", "c3"]
    assert await store.history("nobody") == []
    last = await store.last_switch("shop")
    assert last is not None and last.id == "c3" and last.status is Status.COMPLETED
    assert await store.last_switch("cart") is None


async def test_refused_starts_are_history_and_a_verified_undo_is_the_last_switch(
    store: SqliteStore,
) -> None:
    # Given a completed cutover, then a refused start, then an undo of it that rolled back
    c1 = await store.create(make_cutover("c1", created_at=1000.0), [])
    await store.save(replace(c1, status=Status.COMPLETED), [])
    refusal = Event(kind="refused", message="refused: check h: fail", at=2000.0)
    r1 = replace(make_cutover("r1", created_at=2000.0), status=Status.REFUSED, reason="h: fail")
    await store.create(r1, [refusal])
    u1 = replace(make_cutover("u1", created_at=3000.0), kind="undo", status=Status.ROLLING_BACK)
    u1 = await store.create(u1, [])
    # an undo in flight changes no live color yet, and owns the service
    assert (await store.last_switch("shop")).id == "c1"  # type: ignore[union-attr]
    assert [c.id for c in await store.active("shop")] == ["u1"]
    await store.save(replace(u1, status=Status.ROLLED_BACK), [])
    # a refused start is terminal: it never owns the service, and it is in the history
    assert await store.active("shop") == []
    assert [(c.id, c.status) for c in await store.history("shop")] == [
        ("u1", Status.ROLLED_BACK),
        ("r1", Status.REFUSED),
        ("c1", Status.COMPLETED),
    ]
    assert [e.kind for e in await store.events("r1")] == ["refused"]
    assert (await store.last_switch("shop")).id == "u1"  # type: ignore[union-attr]
    # a plain rolled-back cutover after it changes nothing
    c2 = await store.create(make_cutover("c2", created_at=4000.0), [])
    await store.save(replace(c2, status=Status.ROLLED_BACK), [])
    assert (await store.last_switch("shop")).id == "u1"  # type: ignore[union-attr]


async def test_second_store_on_same_path_refuses_until_first_closes(tmp_path: Path) -> None:
    path = str(tmp_path / "db" / "state.db")
    first = SqliteStore(path=path)
    await first.open()
    second = SqliteStore(path=path)
    try:
        with pytest.raises(StoreError) as info:
            await second.open()
        assert str(info.value) == (
            f"state store {path} is in use by another cutover daemon (pid {os.getpid()})"
        )
        with pytest.raises(StoreError, match="not open"):
            await second.get("x")
        await first.create(make_cutover(), [])  # the first one is unaffected
    finally:
        await first.aclose()
    await second.open()
    try:
        assert await second.get("c1") is not None
    finally:
        await second.aclose()


async def test_full_disk_is_a_store_error_and_nothing_is_half_written(tmp_path: Path) -> None:
    path = str(tmp_path / "full.db")
    s = SqliteStore(path=path)
    await s.open()
    try:
        c = await s.create(make_cutover(), [ev("started")])
        c = await s.save(progressed(c), [ev("tick", 1)])
    finally:
        await s.aclose()

    # the cap cannot go below the current size: 1 means "no growth at all"
    full = SqliteStore(path=path, max_page_count=1)
    await full.open()
    try:
        big = {"blob": "x" * 200_000}
        with pytest.raises(StoreError) as info:
            await full.save(
                replace(c, hold_elapsed=77.0),
                [ev("small", 2), Event(kind="big", message="m", at=1.0, data=big)],
            )
        assert "full" in str(info.value) and path in str(info.value)
        assert isinstance(info.value.__cause__, sqlite3.Error)
        assert not isinstance(info.value, StaleRevisionError)

        with pytest.raises(StoreError, match="full"):
            await full.create(
                replace(make_cutover("c2", service="cart"), reason="y" * 200_000), [ev("s")]
            )

        # still usable for reads, and nothing of either transaction is there
        got = await full.get("c1")
        assert got == c and got.revision == 2
        assert [(e.seq, e.kind) for e in await full.events("c1")] == [(1, "started"), (2, "tick")]
        assert await full.get("c2") is None and await full.events("c2") == []
    finally:
        await full.aclose()

    reopened = SqliteStore(path=path)
    await reopened.open()
    try:
        assert await reopened.get("c1") == c
        assert len(await reopened.events("c1")) == 2
    finally:
        await reopened.aclose()
    with sqlite3.connect(path) as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()


async def test_data_survives_reopen(tmp_path: Path) -> None:
    path = str(tmp_path / "a" / "b" / "state.db")  # missing directories are created
    s = SqliteStore(path=path)
    await s.open()
    try:
        c = await s.create(make_cutover(), [ev("started")])
        c = await s.save(progressed(c), [ev("paused", 1)])
    finally:
        await s.aclose()

    s = SqliteStore(path=path)
    await s.open()
    try:
        assert await s.get("c1") == c
        assert [e.seq for e in await s.events("c1")] == [1, 2]
        c = await s.save(c, [ev("resumed", 2)])
        assert c.revision == 3
        assert [e.seq for e in await s.events("c1")] == [1, 2, 3]
    finally:
        await s.aclose()
    with sqlite3.connect(path) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == (
            str(SCHEMA_VERSION),
        )
    con.close()


async def test_not_a_database_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(b"this is not sqlite" * 500)
    s = SqliteStore(path=str(path))
    with pytest.raises(StoreError, match=r"not an SQLite database|corrupt") as info:
        await s.open()
    assert str(path) in str(info.value)
    # a failed open leaves nothing held: the lock is free again
    other = SqliteStore(path=str(tmp_path / "ok.db"))
    await other.open()
    await other.aclose()
    fd = os.open(f"{path}.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)


async def test_closed_store_refuses_calls_and_aclose_is_idempotent(tmp_path: Path) -> None:
    s = SqliteStore(path=str(tmp_path / "x.db"))
    with pytest.raises(StoreError, match="not open"):
        await s.active()
    await s.open()
    with pytest.raises(StoreError, match="already open"):
        await s.open()
    await s.aclose()
    await s.aclose()
    with pytest.raises(StoreError, match="not open"):
        await s.create(make_cutover(), [])


async def test_event_data_that_is_not_json_is_refused_before_writing(store: SqliteStore) -> None:
    bad = Event(kind="bad", message="m", at=1.0, data={"x": object()})
    with pytest.raises(StoreError, match="not JSON"):
        await store.create(make_cutover(), [bad])
    assert await store.get("c1") is None


# --- webhook delivery cursors ---------------------------------------------------------------


async def test_a_new_notifier_starts_at_the_end_of_every_journal(store: SqliteStore) -> None:
    a = await store.create(make_cutover("a", "shop"), [ev("started", 0), ev("stage", 1)])
    assert await store.register_notifier("hook") is True
    assert await store.register_notifier("hook") is False  # a restart keeps its cursors
    assert await store.undelivered("hook") == []  # the past is not sent to a new webhook
    await store.save(a, [ev("completed", 2)])
    await store.create(make_cutover("b", "cart", created_at=2000.0), [ev("started", 0)])
    pending = await store.undelivered("hook")
    assert [(cid, e.seq, e.kind) for cid, e in pending] == [
        ("a", 3, "completed"),
        ("b", 1, "started"),
    ]
    assert pending[0][1].data == {"n": 2, "list": [1, "x"]}
    assert await store.undelivered("never-registered") == []


async def test_acknowledge_moves_each_cursor_forward_only(store: SqliteStore) -> None:
    await store.register_notifier("hook")
    await store.register_notifier("other")
    await store.create(make_cutover("a", "shop"), [ev("e", n) for n in range(4)])
    await store.create(make_cutover("b", "cart", created_at=2000.0), [ev("e", 0), ev("e", 1)])
    await store.acknowledge("hook", {"a": 3, "b": 1})
    await store.acknowledge("hook", {"a": 1})  # a late, older ack never moves a cursor back
    await store.acknowledge("hook", {})
    assert [(cid, e.seq) for cid, e in await store.undelivered("hook")] == [("a", 4), ("b", 2)]
    assert len(await store.undelivered("other")) == 6  # cursors are per notifier
    assert [e.seq for _, e in await store.undelivered("other", limit=2)] == [1, 2]


async def test_delivery_cursors_survive_a_reopen(tmp_path: Path) -> None:
    path = str(tmp_path / "state.db")
    s = SqliteStore(path=path)
    await s.open()
    try:
        await s.register_notifier("hook")
        await s.create(make_cutover(), [ev("started"), ev("stage", 1)])
        await s.acknowledge("hook", {"c1": 1})
    finally:
        await s.aclose()
    s = SqliteStore(path=path)
    await s.open()
    try:
        assert await s.register_notifier("hook") is False
        assert [e.kind for _, e in await s.undelivered("hook")] == ["stage"]
    finally:
        await s.aclose()


async def test_a_version_1_file_is_migrated_with_its_data(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    s = SqliteStore(path=str(path))
    await s.open()
    try:
        await s.create(make_cutover(), [ev("started")])
    finally:
        await s.aclose()
    with sqlite3.connect(path) as con:  # what a version-1 daemon left behind
        con.execute("DROP TABLE deliveries")
        con.execute("DROP TABLE notifiers")
        con.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    con.close()

    s = SqliteStore(path=str(path))
    await s.open()
    try:
        assert [e.kind for e in await s.events("c1")] == ["started"]
        assert await s.register_notifier("hook") is True
        assert await s.undelivered("hook") == []
    finally:
        await s.aclose()
    with sqlite3.connect(path) as con:
        version = con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    con.close()
    assert version == (str(SCHEMA_VERSION),) == ("2",)
