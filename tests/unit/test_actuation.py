"""The engine prefers a router's one-round-trip write + read-back (AppliesAndObserves) and keeps
the semantics of apply-then-observe: the same outcomes, errors and timed operations."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from cutover.engine.actuation import rollback_once, shift
from cutover.errors import PermanentError
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
