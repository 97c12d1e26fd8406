"""The state store: every cutover record with a revision, and its append-only event journal.

Every write goes through :meth:`StateStore.create` or :meth:`StateStore.save`, each one
transaction that stores the new record *and* its events together, guarded by the revision
(optimistic concurrency), so that a fencing token can be checked in the same transaction when a
replicated store arrives (recipes/state-and-ha.md).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence

from cutover.core.model import Cutover, Event

__all__ = ["StateStore"]


class StateStore(ABC):
    @abstractmethod
    async def open(self) -> None:
        """Create the schema if needed and take the store's lock: a second daemon on the same
        store gets :class:`cutover.errors.StoreError` with a clear message."""

    @abstractmethod
    async def aclose(self) -> None: ...

    @abstractmethod
    async def create(self, cutover: Cutover, events: Sequence[Event]) -> Cutover:
        """Insert a new cutover (revision 1) with its first events.

        Raises :class:`cutover.errors.ConflictError` when the service already has an active
        (non-terminal) cutover: checked in the same transaction, so concurrent starts get
        exactly one winner."""

    @abstractmethod
    async def save(self, cutover: Cutover, events: Sequence[Event]) -> Cutover:
        """Store ``cutover`` if the stored revision still equals ``cutover.revision``; return
        it with the revision incremented. Events get their per-cutover ``seq`` in order.
        Raises :class:`cutover.errors.StaleRevisionError` otherwise."""

    @abstractmethod
    async def get(self, cutover_id: str) -> Cutover | None: ...

    @abstractmethod
    async def active(self, service: str | None = None) -> list[Cutover]:
        """Every cutover that is not completed or rolled back (``failed`` included), of one
        ``service`` or of all."""

    @abstractmethod
    async def history(self, service: str, limit: int = 50) -> list[Cutover]:
        """The service's cutovers, newest first."""

    @abstractmethod
    async def last_switch(self, service: str) -> Cutover | None:
        """The service's newest cutover that changed its live color: a ``completed`` one, or an
        undo that is ``rolled_back`` (:func:`cutover.core.undo.live_after` says which color)."""

    @abstractmethod
    async def events(self, cutover_id: str, after_seq: int = 0) -> list[Event]:
        """The journal of one cutover, oldest first, with ``seq`` > ``after_seq``."""

    # --- delivery cursors (cutover.notify) ----------------------------------------------------
    # A notifier (one webhook) sends journal events at least once. Its cursor is kept per
    # cutover: every event of that cutover up to the cursor's ``seq`` was acknowledged (or is of
    # a kind it does not send). The journal itself stays about cutovers only.

    @abstractmethod
    async def register_notifier(self, notifier: str) -> bool:
        """Give ``notifier`` cursors if it has none yet, at the end of every cutover's journal
        (a webhook added to the config is not sent the past). Returns True when it was new."""

    @abstractmethod
    async def undelivered(self, notifier: str, limit: int = 100) -> list[tuple[str, Event]]:
        """Up to ``limit`` events past the cursors of a registered ``notifier`` as
        ``(cutover id, event)``: cutover by cutover (oldest first), each in ``seq`` order.
        Nothing for a notifier that was never registered."""

    @abstractmethod
    async def acknowledge(self, notifier: str, cursors: Mapping[str, int]) -> None:
        """Move ``notifier``'s cursor of each cutover id to its ``seq`` (never backwards),
        in one transaction."""

    # --- write faults (PRODUCT.md, Store faults are visible) ----------------------------------

    @property
    def write_error(self) -> str:
        """Why the store's writes fail now (disk full, read-only, database lost); "" while
        they succeed. A store that cannot fail to write keeps this default."""
        return ""

    async def check_writable(self) -> str:
        """:attr:`write_error`, after trying a write if the last one failed (so ``/readyz``
        sees the store return even when no cutover is there to write)."""
        return self.write_error
