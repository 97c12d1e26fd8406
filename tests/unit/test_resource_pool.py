"""The daemon's resources: each kind's client made once, on first use; all closed at the end."""

from __future__ import annotations

import pytest
import structlog

from cutover.observability.logging import Redactor
from cutover.resources import Shared
from cutover.testing import resource_pool


class Client:
    def __init__(self, name: str, closed: list[str], *, fails: bool = False) -> None:
        self.name = name
        self._closed = closed
        self._fails = fails

    async def close(self) -> None:
        if self._fails:
            raise OSError(f"{self.name} would not close")
        self._closed.append(self.name)


async def test_a_kind_is_made_once_on_first_use_and_closed_last_made_first() -> None:
    closed: list[str] = []
    made: list[str] = []

    def kind(name: str, *, fails: bool = False) -> Shared[Client]:
        def create() -> Client:
            made.append(name)
            return Client(name, closed, fails=fails)

        return Shared(name, create, Client.close)

    db, aws, broken = kind("db"), kind("aws"), kind("broken", fails=True)
    resources = resource_pool()
    assert made == []  # nothing is made before an adapter asks for it
    assert resources.get(db) is resources.get(db)
    resources.get(broken)
    resources.get(aws)
    assert made == ["db", "broken", "aws"]
    with structlog.testing.capture_logs() as logs:
        await resources.aclose()
    assert closed == ["aws", "db"]  # a failing close does not keep the others open
    assert [(e["event"], e["resource"]) for e in logs] == [("resource_close_failed", "broken")]
    with pytest.raises(RuntimeError, match="db asked for after the resources were closed"):
        resources.get(db)
    await resources.aclose()  # once closed, closing again closes nothing twice
    assert closed == ["aws", "db"]


def test_secrets_go_to_the_sink_the_owner_was_given() -> None:
    redactor = Redactor()
    resources = resource_pool(redactor)
    resources.secrets.add("s3cr3t-value")
    assert redactor(None, "info", {"event": "key s3cr3t-value"}) == {"event": "key [redacted]"}
