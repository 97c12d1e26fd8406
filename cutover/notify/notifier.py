"""Webhook delivery from the persisted journal, at least once, off the engine's path.

Shape, and why:

* **The journal is the outbox.** Events are sent from ``store.undelivered`` (what the store
  holds past this webhook's cursors), never from memory, so an event is sent only once it is
  durable, and a daemon that dies before an acknowledgement resends it at its next start.
  The cursor moves (``store.acknowledge``) only after a 2xx answer; a receiver de-duplicates
  on the event id (cutover id + journal seq) it gets in the body and in ``X-Cutover-Event-Id``.
* **The engine only wakes us.** :meth:`Notifier.wake` is a Supervisor listener that sets an
  :class:`asyncio.Event` and returns: a slow, hanging or dead webhook never delays a runner's
  next step, a stage change or a rollback. Each webhook has its own delivery task, so one dead
  webhook does not hold up another.
* **Bounded effort.** Each event gets at most ``RetryPolicy.attempts`` POSTs per cycle (see
  :mod:`cutover.notify.webhook`); a failed cycle keeps the cursor, logs one ``alarm`` line,
  counts ``cutover_webhook_failures_total`` and pauses with exponential backoff before the
  next one (new events do not cut the pause short). Events of one webhook go out in journal
  order, cutover by cutover, so a receiver never sees ``rolled_back`` before its ``started``.
* **Each webhook its kinds.** A webhook is sent the kinds its ``events:`` lists (by default
  every kind in :data:`~cutover.notify.payload.NOTIFIED`); the others only move its cursor,
  so a filter never holds delivery up, and a lane is woken only by a kind it is sent.
* Delivery trouble is *not* written to the journal, which stays about cutovers only: it shows
  in the metric and the log.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from types import TracebackType

import aiohttp
import structlog
from tenacity import AsyncRetrying, retry_if_result, wait_exponential

from cutover.config import NotifySpec
from cutover.core.model import Cutover, Event
from cutover.errors import StoreError
from cutover.notify.payload import event_id, payload
from cutover.notify.webhook import DeliveryError, RetryPolicy, Webhook
from cutover.observability.metrics import Metrics
from cutover.resources import SecretSink
from cutover.store.base import StateStore

__all__ = ["Notifier"]

#: Journal rows read per store call while catching up.
BATCH = 100


class _Lane:
    """One webhook's delivery task, its wake-up flag and the event kinds it is sent."""

    def __init__(self, webhook: Webhook) -> None:
        self.webhook = webhook
        self.events = frozenset(webhook.spec.events)
        self.wake = asyncio.Event()
        self.wake.set()  # at start: resend whatever the last run left unacknowledged
        self.task: asyncio.Task[None] | None = None


class Notifier:
    """Delivers journal events to every ``notify:`` webhook; use as ``async with`` or call
    :meth:`start` / :meth:`stop`. Pass :meth:`wake` to the Supervisor as a listener."""

    def __init__(
        self,
        *,
        specs: Sequence[NotifySpec],
        store: StateStore,
        secrets: SecretSink,
        metrics: Metrics | None = None,
        policy: RetryPolicy | None = None,
    ) -> None:
        self._store = store
        self._policy = policy or RetryPolicy()
        self._lanes = [
            _Lane(
                Webhook(spec=spec, index=i, policy=self._policy, secrets=secrets, metrics=metrics)
            )
            for i, spec in enumerate(specs)
        ]
        self._session: aiohttp.ClientSession | None = None
        self._log = structlog.get_logger()

    async def start(self) -> None:
        """Register every webhook's cursors (a new one starts at the end of the journal) and
        start delivering; call it before the engine resumes cutovers."""
        if not self._lanes:
            return
        for lane in self._lanes:
            await self._store.register_notifier(lane.webhook.key)
        self._session = aiohttp.ClientSession()
        for lane in self._lanes:
            lane.task = asyncio.create_task(self._run(lane), name=f"notify-{lane.webhook.name}")

    async def stop(self) -> None:
        """Stop delivering; whatever was not acknowledged is sent by the next start."""
        tasks = [lane.task for lane in self._lanes if lane.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for lane in self._lanes:
            lane.task = None
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def __aenter__(self) -> Notifier:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def wake(self, cutover: Cutover, events: list[Event]) -> None:
        """The Supervisor listener: new events were persisted. Never blocks."""
        kinds = {e.kind for e in events}
        for lane in self._lanes:
            if kinds & lane.events:
                lane.wake.set()

    # --- delivery ------------------------------------------------------------------------------

    async def _run(self, lane: _Lane) -> None:
        """Drain the lane each time it is woken; a failed cycle is tried again after a pause
        (doubling while it keeps failing) without waiting for a new event."""
        cycles = AsyncRetrying(
            wait=wait_exponential(multiplier=self._policy.pause, max=self._policy.pause_max),
            retry=retry_if_result(lambda drained: not drained),
        )
        while True:
            await lane.wake.wait()
            lane.wake.clear()
            await cycles(self._drain, lane)

    async def _drain(self, lane: _Lane) -> bool:
        """Send everything past the cursors; False when a cycle ended on a failure."""
        hook = lane.webhook
        try:
            while True:
                pending = await self._store.undelivered(hook.key, BATCH)
                if not await self._send(lane, pending):
                    return False
                if len(pending) < BATCH:
                    return True
        except StoreError as exc:
            self._log.error(
                "webhook delivery cannot read or move its cursor; will retry",
                webhook=hook.name,
                error=str(exc),
                alarm=True,
            )
            return False
        except Exception as exc:  # a bug must not end delivery for good: alarm, retry later
            self._log.error(
                "webhook delivery crashed; will retry",
                webhook=hook.name,
                error=repr(exc),
                alarm=True,
            )
            return False

    async def _send(self, lane: _Lane, pending: list[tuple[str, Event]]) -> bool:
        """Send ``pending`` in order; kinds this webhook is not sent only move the cursor.
        Each delivery is acknowledged at once, so a stop or a crash resends nothing that was
        acknowledged."""
        hook = lane.webhook
        records: dict[str, Cutover] = {}
        moved: dict[str, int] = {}
        for cutover_id, e in pending:
            moved[cutover_id] = e.seq
            if e.kind not in lane.events:
                continue
            if not await self._deliver(hook, cutover_id, e, records):
                moved[cutover_id] = e.seq - 1  # everything before it is done
                await self._store.acknowledge(hook.key, moved)
                return False
            await self._store.acknowledge(hook.key, moved)
            moved = {}
        await self._store.acknowledge(hook.key, moved)
        return True

    async def _deliver(
        self, hook: Webhook, cutover_id: str, e: Event, records: dict[str, Cutover]
    ) -> bool:
        assert self._session is not None, "start() first"
        c = records.get(cutover_id) or await self._store.get(cutover_id)
        eid = event_id(cutover_id, e.seq)
        if c is None:
            raise StoreError(f"cutover {cutover_id} of event {eid} is not in the state store")
        records[cutover_id] = c
        log = self._log.bind(
            webhook=hook.name, service=c.service, cutover=cutover_id, event_id=eid, kind=e.kind
        )
        try:
            await hook.post(self._session, eid, payload(c, e, hook.spec.format))
        except DeliveryError as exc:
            log.warning(
                "webhook delivery failed; will retry",
                target=hook.target,
                error=str(exc),
                alarm=True,
            )
            return False
        log.info("webhook delivered")
        return True
