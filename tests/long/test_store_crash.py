"""SIGKILL crash test of SqliteStore (the method of recipes/state-and-ha.md, section 3).

A child process saves transitions of one cutover through SqliteStore, one event each (2 KB
payload), and prints each revision after ``save`` returns. The parent SIGKILLs it at random
instants (most after it is writing, some while it is still starting or opening the store),
restarts it against the same file, and after each kill checks: ``integrity_check`` is ok, the
stored revision is the last acknowledged one or one more, the body's revision matches the
column, the events are gapless 1..N with N == revision, and each event belongs to the
transaction that wrote its revision (record and journal are atomic together).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cutover.store.sqlite import SqliteStore

pytestmark = pytest.mark.long

KILLS = 30
ROOT = Path(__file__).resolve().parents[2]

CHILD = r"""
import asyncio, sys, time
from dataclasses import replace
from cutover.core.model import Cutover, Event, Plan, Stage
from cutover.store.sqlite import SqliteStore

PAD = "p" * 2000

async def main(path):
    store = SqliteStore(path=path)
    await store.open()
    c = await store.get("c1")
    if c is None:
        c = Cutover(id="c1", service="shop", from_color="blue", to_color="green",
                    plan=Plan(stages=(Stage(weight=100, hold=1.0),)),
                    created_at=time.time(), updated_at=time.time())
        c = await store.create(c, [Event(kind="created", message="", at=time.time(),
                                         data={"rev": 1, "pad": PAD})])
        print(c.revision, flush=True)
    print("ready", flush=True)
    while True:
        c = await store.save(
            replace(c, hold_elapsed=c.hold_elapsed + 1.0, updated_at=time.time()),
            [Event(kind="tick", message="", at=time.time(),
                   data={"rev": c.revision + 1, "pad": PAD})],
        )
        print(c.revision, flush=True)

asyncio.run(main(sys.argv[1]))
"""


def _acked(lines: list[str]) -> int:
    revs = [int(line) for line in lines if line.strip().isdigit()]
    return max(revs, default=0)


async def _check_through_store(path: str) -> tuple[int, list[int]]:
    """Reopen with the store itself first: it is the one that recovers from the WAL."""
    store = SqliteStore(path=path)
    await store.open()  # the dead child's lock must be gone
    try:
        c = await store.get("c1")
        events = await store.events("c1")
    finally:
        await store.aclose()
    if c is None:
        return 0, []
    assert all(e.data["rev"] == e.seq for e in events)
    return c.revision, [e.seq for e in events]


def _check_raw(path: str) -> tuple[int, int]:
    con = sqlite3.connect(path)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        row = con.execute("SELECT revision, body FROM cutovers WHERE id = 'c1'").fetchone()
        n = con.execute("SELECT COUNT(*) FROM events WHERE cutover_id = 'c1'").fetchone()[0]
    finally:
        con.close()
    if row is None:
        return 0, n
    assert json.loads(row[1])["revision"] == row[0]
    return row[0], n


def test_sigkill_at_random_instants_keeps_the_store_consistent(tmp_path: Path) -> None:
    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    path = str(tmp_path / "crash" / "state.db")
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    last_acked = 0
    early_kills = 0
    unacked_commits = 0  # kills that landed after COMMIT but before the print was read
    started = time.monotonic()

    for round_no in range(KILLS):
        proc = subprocess.Popen(
            [sys.executable, str(script), path],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        lines: list[str] = []
        try:
            if round_no % 6 == 5:
                # kill while the child may still be importing, opening or creating
                early_kills += 1
                time.sleep(rng.uniform(0.0, 0.4))
            else:
                assert proc.stdout is not None
                while True:
                    line = proc.stdout.readline()
                    assert line, f"child exited early: {proc.wait()} {proc.stderr}"
                    if line.strip() == "ready":
                        break
                    lines.append(line)
                time.sleep(rng.uniform(0.0, 0.25))
            proc.send_signal(signal.SIGKILL)
            out, err = proc.communicate(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert proc.returncode == -signal.SIGKILL, (round_no, proc.returncode, err)
        lines.extend(out.splitlines())
        acked = max(last_acked, _acked(lines))

        revision, seqs = asyncio.run(_check_through_store(path))
        raw_revision, raw_count = _check_raw(path)
        context = (round_no, f"seed {seed}", acked, revision, seqs[-3:])
        assert raw_revision == revision, context
        assert revision in (acked, acked + 1), context
        assert seqs == list(range(1, revision + 1)), context
        assert raw_count == revision, context
        unacked_commits += revision == acked + 1
        last_acked = revision

    elapsed = time.monotonic() - started
    assert last_acked > KILLS, "the children hardly wrote anything"
    print(
        f"{KILLS} kills ({early_kills} early, {unacked_commits} after an unacknowledged commit), "
        f"final revision {last_acked}, {elapsed:.1f} s"
    )
