"""The engine prefers a router's one-round-trip write + read-back (AppliesAndObserves) and keeps
the semantics of apply-then-observe: the same outcomes, errors and timed operations."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from cutover.engine.actuation import RouterOutcome, rollback_once, shift
from cutover.errors import PermanentError, TransientError
from cutover.routers.base import AppliesAndObserves, Reading, one_round_trip
from cutover.testing import FakeClock, FakeRouter


class OneTripRouter(FakeRouter):
    """A fake whose write and read-back are one call (it records that call as ``apply``)."""

    def __init__(self, name: str, *, share: int = 0) -> None:
        super().__init__(name, share=share)
        self.one_trips = 0

    async def apply_and_observe(self, share: int, *, evacuate: bool = False) -> Reading:
        self.one_trips += 1
        await self.apply(share, evacuate=evacuate)
        return Reading(share=self.share, state=dict(self.state), detail="one trip")


class OpsTimer:
    """Records the operations the engine times (what a RouterTimer is asked to observe)."""

    def __init__(self) -> None:
        self.ops: list[str] = []

    @contextlib.contextmanager
    def time(self, router: str, op: str) -> Iterator[None]:
        self.ops.append(op)
        yield


def test_only_routers_with_the_method_have_the_capability() -> None:
    one_trip, plain = OneTripRouter("r"), FakeRouter("r")
    assert isinstance(one_trip, AppliesAndObserves)
    assert not isinstance(plain, AppliesAndObserves)
    # what the engine asks instead of isinstance (cheaper), with the same answers
    assert one_round_trip(one_trip) is one_trip
    assert one_round_trip(plain) is None


async def test_rollback_is_one_call_when_the_router_can() -> None:
    router, timer = OneTripRouter("edge", share=50), OpsTimer()
    (outcome,) = await rollback_once({"edge": router}, FakeClock(), timer)
    assert (outcome.result, outcome.error) == ("applied", "")
    assert outcome.reading is not None and outcome.reading.detail == "one trip"
    assert [c.op for c in router.calls] == ["apply"]
    assert (router.one_trips, timer.ops) == (1, ["rollback"])


async def test_rollback_whose_one_call_fails_reads_back_and_reports_the_write_error() -> None:
    router, timer = OneTripRouter("edge", share=50), OpsTimer()
    router.fail(PermanentError, "router edge: No such server.", times=None)
    (outcome,) = await rollback_once({"edge": router}, FakeClock(), timer)
    assert (outcome.result, outcome.error) == ("failed", "router edge: No such server.")
    assert outcome.reading is not None and outcome.reading.state == {"share": "w50"}
    assert [c.op for c in router.calls] == ["apply", "observe"]
    assert timer.ops == ["rollback", "observe"]

    router.state = {"share": "maint"}  # the write failed, yet the router reads all-old: done
    (outcome,) = await rollback_once({"edge": router}, FakeClock())
    assert (outcome.result, outcome.error) == ("applied", "")


async def test_forward_shift_reads_back_in_the_same_call() -> None:
    router, timer = OneTripRouter("edge", share=10), OpsTimer()
    (outcome,) = await shift(
        {"edge": router},
        30,
        written_states={"edge": {"share": "w10"}},
        force=False,
        apply_timeout=5.0,
        clock=FakeClock(),
        timer=timer,
    )
    assert outcome.result == "applied"
    assert outcome.reading is not None and outcome.reading.state == {"share": "w30"}
    assert [c.op for c in router.calls] == ["observe", "apply"]  # drift guard, then one trip
    assert timer.ops == ["observe", "apply"]


async def test_forward_shift_error_in_the_one_call_fails_as_after_apply() -> None:
    router = OneTripRouter("edge", share=10)
    router.fail(PermanentError, "router edge: static LB algorithm")
    (outcome,) = await shift(
        {"edge": router},
        30,
        written_states={"edge": {"share": "w10"}},
        force=False,
        apply_timeout=5.0,
        clock=FakeClock(),
    )
    assert (outcome.result, outcome.error) == ("failed", "router edge: static LB algorithm")


async def _shift_on_fake_time(
    routers: dict[str, FakeRouter], share: int, *, written: int, apply_timeout: float = 5.0
) -> tuple[list[RouterOutcome], set[str], list[tuple[str, str]]]:
    """Run ``shift`` on a fake clock advanced until it ends: its outcomes, the unsettled
    routers and every retried failure it reported."""
    clock, unsettled, retried = FakeClock(), set[str](), list[tuple[str, str]]()
    task = asyncio.create_task(
        shift(
            routers,
            share,
            written_states={name: {"share": f"w{written}"} for name in routers},
            force=False,
            apply_timeout=apply_timeout,
            clock=clock,
            on_retry=lambda router, error: retried.append((router, error)),
            unsettled=unsettled,
        )
    )
    await clock.advance_until(task.done, within=apply_timeout + 5)
    return task.result(), unsettled, retried


async def test_one_drifted_router_holds_every_router_of_the_shift() -> None:
    edge, dns = FakeRouter("edge", share=10), FakeRouter("dns", share=10)
    edge.set_by_hand(0)  # an operator's emergency rollback of one router
    outcomes, _, _ = await _shift_on_fake_time({"edge": edge, "dns": dns}, 50, written=10)
    assert [(o.router, o.result) for o in outcomes] == [("edge", "drift"), ("dns", "held")]
    assert edge.applied == dns.applied == []
    assert dns.state == {"share": "w10"}


async def test_an_unreadable_router_holds_the_others_and_each_failed_try_is_reported() -> None:
    edge, dns = FakeRouter("edge", share=10), FakeRouter("dns", share=10)
    dns.fail(TransientError, "router dns: no answer", times=None, ops=("observe",))
    outcomes, _, retried = await _shift_on_fake_time({"edge": edge, "dns": dns}, 50, written=10)
    assert [(o.router, o.result) for o in outcomes] == [("edge", "held"), ("dns", "failed")]
    assert edge.applied == []
    assert len(retried) >= 3 and set(retried) == {("dns", "router dns: no answer")}


async def test_a_write_never_answered_leaves_its_router_unsettled() -> None:
    edge, dns = FakeRouter("edge", share=10), FakeRouter("dns", share=10)
    dns.hang(ops=("apply",))  # a frozen server: the write is sent, no answer comes
    outcomes, unsettled, _ = await _shift_on_fake_time(
        {"edge": edge, "dns": dns}, 50, written=10, apply_timeout=2.0
    )
    assert [(o.router, o.result) for o in outcomes] == [("edge", "applied"), ("dns", "failed")]
    assert unsettled == {"dns"}  # its write may still land: a rollback verifies it again
    dns.clear()
    outcomes, unsettled, _ = await _shift_on_fake_time({"dns": dns}, 50, written=10)
    assert [o.result for o in outcomes] == ["applied"] and unsettled == set()
