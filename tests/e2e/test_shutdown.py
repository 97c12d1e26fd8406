"""Graceful shutdown: SIGTERM mid-hold leaves traffic where it is, persists, exits 0 within 2 s,
and the next daemon resumes the cutover."""

from __future__ import annotations

import signal
import time

from cutover.store.sqlite import SqliteStore
from tests.e2e.conftest import E2E

STAGES = [
    {"weight": 10, "hold": "1s"},
    {"weight": 50, "hold": "8s"},
    {"weight": 100, "hold": "1s"},
]


async def test_sigterm_mid_hold_leaves_traffic_persists_and_the_next_start_resumes(
    e2e: E2E,
) -> None:
    # Given a cutover holding at 50 % for a while, under real traffic
    c = await e2e.holding_at(STAGES, stage=1)
    cid = c["id"]
    await e2e.wait_for(cid, state="running", stage=1, phase="holding")
    before_share = await e2e.green_share(2000)
    assert abs(before_share - 50) <= 3, before_share
    t_hold = time.monotonic()
    while (await e2e.cutover(cid))["hold_elapsed"] < 2.0:  # some monitored time to keep
        assert time.monotonic() - t_hold < 10
    servers = await e2e.stack.haproxy.cli("show servers state checkout")
    seen = (await e2e.cutover(cid))["hold_elapsed"]  # the daemon writes it every 5 s otherwise

    # When the daemon gets SIGTERM
    assert e2e.daemon is not None
    t0 = time.monotonic()
    e2e.daemon.proc.send_signal(signal.SIGTERM)
    rc = await e2e.daemon.proc.wait()
    took = time.monotonic() - t0
    await e2e.daemon.stop()

    # Then it exits 0 within 2 s and traffic is exactly where it was
    assert rc == 0, e2e.daemon_log()[-2000:]
    assert took < 2.0, took
    assert _weights(await e2e.stack.haproxy.cli("show servers state checkout")) == _weights(servers)
    after_share = await e2e.green_share(2000)
    assert abs(after_share - before_share) <= 3, (before_share, after_share)

    # And the store has the cutover where it was, its hold progress included
    store = SqliteStore(path=str(e2e.dir / "state" / "cutover.db"))
    await store.open()
    try:
        stored = await store.get(cid)
    finally:
        await store.aclose()
    assert stored is not None
    assert (stored.status.value, stored.stage_index, stored.phase.value) == (
        "running",
        1,
        "holding",
    )
    assert stored.hold_elapsed >= seen - 0.001, (stored.hold_elapsed, seen)  # API rounds
    print(f"\nSIGTERM: exit 0 in {took:.2f} s; green {before_share:.1f}% -> {after_share:.1f}%")

    # When the daemon starts again, then it resumes the cutover and completes it
    await e2e.start_daemon()
    done = await e2e.wait_for(cid, state="completed", within=30)
    kinds = [ev["kind"] for ev in done["events"]]
    assert kinds.count("restarted") == 1
    assert kinds.count("stage_started") == 3
    assert [ev["seq"] for ev in done["events"]] == list(range(1, len(kinds) + 1))
    assert await e2e.green_share(500) == 100.0


def _weights(state: str) -> list[tuple[str, str, str]]:
    """(server, admin state, weight) rows of ``show servers state``."""
    rows = [line.split() for line in state.splitlines()[2:] if line.strip()]
    return sorted((row[3], row[6], row[7]) for row in rows)
