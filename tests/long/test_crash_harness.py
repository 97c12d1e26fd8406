"""Crash harness: the daemon SIGKILLed at random instants of real cutovers, restarted each time.

The daemon runs as a subprocess against real HAProxy and demo apps (``tests/e2e``'s ``E2E``).
Each cutover has 4 stages with holds of 1-1.5 s and an HTTP health check of the new color every
300 ms. While it runs, the harness kills the daemon (SIGKILL) in one of two ways:

* ``random``: after a random delay (0.05-2 s) from the moment the daemon is ready: mid-hold,
  during a stage change, mid-rollback, wherever it lands;
* ``persist-act``: the daemon runs with the runner's test hook ``--test-act-delay 1``,
  which holds it 1 s between writing a transition and acting on it; the harness kills it as soon
  as the API shows a new ``stage_started`` or ``rollback_started`` -- persisted, not yet acted on
  (HAProxy is checked to still hold the previous state);
* ``rollback``: the last kill of a cutover whose new color fails waits for its
  ``rollback_started`` the same way (a failing cutover always runs with the hook): mid-rollback.

After every kill it reads the store as the dead daemon left it, restarts the daemon and checks:

* the next journal entry is exactly one ``restarted`` (seq = the last persisted seq + 1);
* the Restart rule of PRODUCT.md: restarting alone never rolls back -- a running cutover stays
  running (or, beyond ``max_restarts``, ``paused`` with an ``alarm``), a rollback continues;
* every router is reconciled within one observation interval (1 s, plus 1 s of slack): HAProxy,
  read through its runtime API, holds exactly what the cutover's desired share writes (the new
  color in ``maint`` when rolling back), or, when paused, what the daemon last wrote.

At the end of each cutover the journal is continuous (seq 1..N), every stage started once and in
order, there is one ``restarted`` per kill, and the outcome is an uninterrupted run's:
``completed`` for a healthy new color, ``rolled_back`` (on the health check, never on a restart)
for one that fails in stage 2.

More than 3 restarts within 10 minutes pause a cutover (PRODUCT.md). The harness keeps the
default ``max_restarts``/``restart_window`` and **resumes as an operator would**: when a
restart left the cutover ``paused`` with that alarm, it checks the alarm and calls ``resume``.

``make test`` runs a reduced count (3 kills, one healthy cutover); ``make test-long`` the full
one (>= 32 kills over alternating healthy and failing cutovers).
"""

from __future__ import annotations

import asyncio
import collections
import os
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from cutover.core.model import Cutover, Status
from cutover.core.weights import split_weights
from cutover.store.sqlite import SqliteStore
from demo.stack import start_stack
from tests.e2e.conftest import E2E

STAGES = [
    {"weight": 10, "hold": "1s"},
    {"weight": 25, "hold": "1500ms"},
    {"weight": 50, "hold": "1s"},
    {"weight": 100, "hold": "1s"},
]
#: The runner reads routers back every max(1 s, min check interval): one interval.
INTERVAL = 1.0
RECONCILE_WITHIN = INTERVAL + 1.0
ACT_DELAY = 1.0
MAX_RESTARTS = 3  # the default, kept: the harness resumes as an operator would
KILLS_FULL = 32
KILLS_REDUCED = 3
TERMINAL = ("completed", "rolled_back")
TRANSITIONS = {"stage_started", "rollback_started"}  # each followed by an action


@pytest.fixture
async def env() -> AsyncIterator[E2E]:
    stack = await start_stack(color_health=True)
    e = E2E(stack)
    try:
        await stack.haproxy.cli(
            "set server checkout/green1 state maint; set server checkout/green2 state maint"
        )
        yield e
    finally:
        if e.daemon is not None:
            await e.daemon.stop()
        await stack.stop()


# --- reading the world ----------------------------------------------------------------------


async def haproxy_state(e: E2E) -> dict[str, str]:
    """``show servers state checkout`` -> {server: "maint" | "drain" | "w<weight>"}."""
    answer = await e.stack.haproxy.cli("show servers state checkout")
    header: list[str] = []
    state: dict[str, str] = {}
    for line in answer.splitlines()[1:]:
        if line.startswith("#"):
            header = line.lstrip("#").split()
            continue
        if not line.strip():
            continue
        row = dict(zip(header, line.split(), strict=False))
        admin = int(row["srv_admin_state"])
        name = row["srv_name"]
        state[name] = "maint" if admin & 0x27 else "drain" if admin & 0x18 else ""
        state[name] = state[name] or f"w{row['srv_uweight']}"
    return state


def expected_state(e: E2E, c: dict[str, Any], share: int, *, evacuate: bool) -> dict[str, str]:
    colors = {"blue": e.stack.blue, "green": e.stack.green}
    old, new = colors[c["from"]], colors[c["to"]]
    w = e.stack.weights
    weights = split_weights(share, old=[(s, w[s]) for s in old], new=[(s, w[s]) for s in new])
    return {s: "maint" if evacuate and s in new else f"w{weights[s]}" for s in (*old, *new)}


async def persisted(e: E2E, cutover_id: str) -> tuple[Cutover, list[int], list[str]]:
    """What the dead daemon left in the store: the cutover, its event seqs and kinds."""
    store = SqliteStore(path=str(e.dir / "state" / "cutover.db"))
    await store.open()
    try:
        c = await store.get(cutover_id)
        events = await store.events(cutover_id)
    finally:
        await store.aclose()
    assert c is not None
    return c, [ev.seq for ev in events], [ev.kind for ev in events]


# --- the harness ----------------------------------------------------------------------------


class Harness:
    def __init__(self, e: E2E, rng: random.Random) -> None:
        self.e = e
        self.rng = rng
        self.delayed = False  # the running daemon has the persist-act hook
        self.stats: collections.Counter[str] = collections.Counter()
        # The new color starts failing only while a kill is being waited for (``watching``),
        # never while a restart is being checked: a restarted daemon could otherwise roll
        # back and finish before the next kill, and no kill would land in the rollback.
        self.watching = asyncio.Event()
        self.breaking = False  # the new color is being made to fail: the next kill is for it

    async def start_daemon(self, *, act_delay: bool) -> None:
        self.delayed = act_delay
        await self.e.start_daemon(act_delay=ACT_DELAY if act_delay else 0.0)

    async def run_cutover(self, *, kills: int, fail_new: bool) -> dict[str, Any]:
        """One cutover, killed ``kills`` times; returns its final JSON."""
        e = self.e
        mode = self._mode(kills_left=kills)
        # a failing cutover always runs with the hook, so its rollback_started can be caught
        await self.start_daemon(act_delay=fail_new or mode == "persist-act")
        c = await e.start()
        cid, new = c["id"], c["to"]
        failing = asyncio.Event()
        breaker = asyncio.create_task(self._fail_in_stage_2(cid, new, failing), name="breaker")
        if not fail_new:
            breaker.cancel()
        done = resumed = 0
        caught_rollback = False
        try:
            while True:
                c = await e.cutover(cid)
                if c["state"] in TERMINAL or done >= kills:
                    break
                rollback_ahead = fail_new and not caught_rollback
                if rollback_ahead and (failing.is_set() or done == kills - 1):
                    mode = "rollback"  # wait for the persisted rollback_started, then kill
                interrupt = failing if rollback_ahead and not failing.is_set() else None
                used = await self._kill(cid, mode, interrupt=interrupt)
                if used is None:
                    continue  # the cutover ended before this kill's instant
                caught_rollback = caught_rollback or used == "rollback"
                done += 1
                mode = self._mode(kills_left=kills - done)
                act_delay = fail_new or mode == "persist-act"
                resumed += await self._restart_and_check(cid, act_delay=act_delay)
            self.watching.set()  # no more kills: the new color may fail at any time now
            c = await e.wait_for(cid, state=TERMINAL, within=60)
        finally:
            self.watching.clear()
            self.breaking = False
            breaker.cancel()
            await asyncio.gather(breaker, return_exceptions=True)
        self._check_journal(c, restarts=resumed)
        want = "rolled_back" if fail_new else "completed"
        assert c["state"] == want, (c["state"], c["reason"])
        if fail_new:
            assert "new-health" in c["reason"], c["reason"]
            await self._set_health(new, ok=True)
        assert await haproxy_state(e) == expected_state(
            e, c, 100 if want == "completed" else 0, evacuate=want == "rolled_back"
        )
        await e.stop_daemon()
        self.stats["cutovers"] += 1
        self.stats[want] += 1
        return c

    def _mode(self, *, kills_left: int) -> str:
        if kills_left <= 0:
            return "none"
        return self.rng.choice(("random", "random", "persist-act"))

    async def _fail_in_stage_2(self, cid: str, new: str, failing: asyncio.Event) -> None:
        """The new color's health starts failing once stage 2 (index 1) has begun, while a
        kill is being waited for (see ``watching``)."""
        while True:
            try:
                c: dict[str, Any] | None = await self.e.cutover(cid)
            except (aiohttp.ClientError, OSError):
                c = None
            if c is not None and c["stage"] >= 1 and self.watching.is_set():
                self.breaking = True
                await self._set_health(new, ok=False)
                failing.set()
                return
            await asyncio.sleep(0.03)

    async def _set_health(self, color: str, *, ok: bool) -> None:
        for app in self.e.stack.apps.values():
            if app.color == color:
                await app.set_health(ok)
        if not ok:
            self.stats["new color failed"] += 1

    async def _kill(self, cid: str, mode: str, *, interrupt: asyncio.Event | None) -> str | None:
        """Kill the daemon at an instant chosen by ``mode``; returns the mode used (a wait that
        sees ``interrupt`` set -- the new color started failing -- turns into a wait for the
        rollback), or ``None`` when the cutover ended first."""
        e = self.e
        self.watching.set()
        if mode == "random":
            try:
                async with asyncio.timeout(self.rng.uniform(0.05, 2.0)):
                    await (interrupt or asyncio.Event()).wait()
                mode = "rollback"
            except TimeoutError:
                if self.breaking:
                    mode = "rollback"
        if mode != "random":
            wanted = {"rollback_started"} if mode == "rollback" else TRANSITIONS
            base = (await e.cutover(cid))["events"][-1]["seq"]
            deadline = time.monotonic() + 15
            while True:
                if self.breaking and mode != "rollback":
                    # the new color started failing during this wait: catch its rollback
                    # instead, or the restart this kill leads to may see it begin and end
                    mode, wanted = "rollback", {"rollback_started"}
                c = await e.cutover(cid)
                fresh = [ev for ev in c["events"] if ev["seq"] > base]
                if any(ev["kind"] in wanted for ev in fresh):
                    break
                # a rollback that started before ``base`` (while the last restart was being
                # checked) is still rolling back: the hook holds it a second before it acts
                if mode == "rollback" and c["state"] == "rolling_back":
                    break
                if c["state"] in TERMINAL:
                    self.watching.clear()
                    return None
                assert time.monotonic() < deadline, f"no transition to catch: {c['state']}"
                await asyncio.sleep(0.03)
        if self.breaking and mode != "rollback":  # it began as this kill was due: catch it
            return await self._kill(cid, "rollback", interrupt=interrupt)
        self.watching.clear()
        if mode == "rollback":
            self.breaking = False  # caught: later kills of this cutover are ordinary again
        await e.kill_daemon()
        self.stats["kills"] += 1
        self.stats[f"kills {mode}"] += 1
        return mode

    async def _restart_and_check(self, cid: str, *, act_delay: bool) -> bool:
        """Restart the daemon and check it; ``False`` when the kill landed after the end."""
        e = self.e
        before, seqs, kinds = await persisted(e, cid)
        assert seqs == list(range(1, len(seqs) + 1)), seqs
        where = f"{before.status.value}/{before.phase.value}"
        self.stats[f"killed at {where}"] += 1
        if not before.status.terminal:
            self.stats["kills of an active cutover"] += 1
        if before.status.terminal:  # nothing to resume: the restart leaves it alone
            await self.start_daemon(act_delay=act_delay)
            self.stats["restarts"] += 1
            await asyncio.sleep(INTERVAL)
            c = await e.cutover(cid)
            assert (c["state"], len(c["events"])) == (before.status.value, len(seqs)), c
            self.stats["reconciled"] += 1
            return False
        hap = await haproxy_state(e)
        r = before.routers[0]
        if kinds[-1] in ("stage_started", "rollback_started") and hap == dict(
            r.written_state or {}
        ):
            self.stats["killed between persist and act"] += 1

        await self.start_daemon(act_delay=act_delay)
        self.stats["restarts"] += 1
        c = await self._after(cid, len(seqs))
        restarted = c["events"][len(seqs)]
        assert restarted["kind"] == "restarted", restarted
        in_window = restarted["data"]["restarts_in_window"]

        # the Restart rule: a restart alone never rolls back
        later = c["events"][len(seqs) + 1 :]
        rollbacks = [ev for ev in later if ev["kind"] == "rollback_started"]
        assert all(ev["data"]["cause"] == "check" for ev in rollbacks), rollbacks
        if before.status in (Status.ROLLING_BACK, Status.FAILED):
            self.stats["rollbacks continued"] += 1
        elif before.status in (Status.RUNNING, Status.AWAITING_APPROVAL) and (
            in_window > MAX_RESTARTS
        ):
            alarm = later[0] if later else None
            assert alarm is not None and alarm["kind"] == "alarm", later
            assert "restarts within" in alarm["message"], alarm
        await self._reconciled(cid, before)
        c = await e.cutover(cid)
        if c["state"] == "paused" and any(
            ev["kind"] == "alarm" and "restarts within" in ev["message"]
            for ev in c["events"][len(seqs) :]
        ):
            status, body = await e.api("POST", f"/v1/cutovers/{cid}/resume")
            assert status == 200, body
            self.stats["operator resumes after max_restarts"] += 1
        return True

    async def _after(self, cid: str, n: int) -> dict[str, Any]:
        """The cutover once the restarted daemon has journaled past ``n`` events."""
        deadline = time.monotonic() + 5
        while True:
            c = await self.e.cutover(cid)
            if len(c["events"]) > n:
                return c
            assert time.monotonic() < deadline, "no restarted event after the restart"
            await asyncio.sleep(0.02)

    async def _reconciled(self, cid: str, before: Cutover) -> None:
        """HAProxy holds what the cutover says within one interval after the restart."""
        e = self.e
        deadline = time.monotonic() + RECONCILE_WITHIN + (ACT_DELAY if self.delayed else 0)
        written = dict(before.routers[0].written_state or {})
        while True:
            c = await e.cutover(cid)
            hap = await haproxy_state(e)
            rolling = c["state"] in ("rolling_back", "rolled_back", "failed")
            desired = c["routers"][0]["desired"]
            if c["phase"] == "preflight" and hap == written:
                break  # nothing written yet: preflight's own reading
            if hap == expected_state(e, c, desired, evacuate=rolling):
                break
            if c["state"] == "paused" and hap == written:
                break  # paused: the routers keep what the daemon last wrote
            assert time.monotonic() < deadline, (
                f"not reconciled within {RECONCILE_WITHIN}s: {c['state']}/{c['phase']} "
                f"desired {desired}, HAProxy {hap}, last written {written}\n"
                f"{e.daemon_log()[-3000:]}"
            )
            await asyncio.sleep(0.05)
        self.stats["reconciled"] += 1

    def _check_journal(self, c: dict[str, Any], *, restarts: int) -> None:
        events = c["events"]
        assert [ev["seq"] for ev in events] == list(range(1, len(events) + 1))
        kinds = [ev["kind"] for ev in events]
        assert kinds[0] == "started" and kinds[-1] in TERMINAL, kinds
        assert kinds.count("restarted") == restarts, kinds
        assert kinds.count(kinds[-1]) == 1, kinds
        started = [ev["data"]["stage"] for ev in events if ev["kind"] == "stage_started"]
        assert started == list(range(len(started))), started  # once each, in order
        applied = [ev["data"]["stage"] for ev in events if ev["kind"] == "stage_applied"]
        assert applied == sorted(set(applied)), applied
        assert kinds.count("rollback_started") == (kinds[-1] == "rolled_back"), kinds
        self.stats["journal events"] += len(events)


async def _harness(e: E2E, *, kills: int, full: bool) -> None:
    seed = int.from_bytes(os.urandom(4), "big")
    h = Harness(e, random.Random(seed))
    e.write_config(stages=STAGES)
    started = time.monotonic()
    round_no = 0
    try:
        while h.stats["kills of an active cutover"] < kills:
            fail_new = full and round_no % 2 == 1
            left = kills - h.stats["kills of an active cutover"]
            await h.run_cutover(kills=min(6, max(left, 2 * fail_new)), fail_new=fail_new)
            round_no += 1
    except BaseException:
        print(f"seed {seed}: {dict(h.stats)}")
        raise
    elapsed = time.monotonic() - started
    print(f"\ncrash harness (seed {seed}, {elapsed:.0f} s): {dict(sorted(h.stats.items()))}")
    assert h.stats["kills of an active cutover"] >= kills
    assert h.stats["reconciled"] == h.stats["restarts"] == h.stats["kills"]
    if full:
        assert h.stats["completed"] and h.stats["rolled_back"]
        assert h.stats["killed between persist and act"] > 0
        assert h.stats["rollbacks continued"] > 0


async def test_crash_harness_reduced(env: E2E) -> None:
    await _harness(env, kills=KILLS_REDUCED, full=False)


@pytest.mark.long
async def test_crash_harness_full(env: E2E) -> None:
    await _harness(env, kills=KILLS_FULL, full=True)
