"""The encoded status answers (``cutover.api.views``) say what a fresh encoding would say.

The views cache each cutover's encoded JSON (an equal cutover is not encoded again) and
read only new events from the store; each test here compares such an answer with one a fresh
:class:`StatusViews` encodes from scratch, or with the store itself. The last tests drive a real
supervisor (fake routers and checks, a :class:`FakeClock`) through the app.
"""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from pydantic import BaseModel, ValidationError

from cutover.api import models
from cutover.api import views as views_module
from cutover.api.app import LIST_BUILDS, LISTING, VIEWS, accepts_gzip
from cutover.api.views import LIST_MAX_AGE, LIST_STALE_MAX_AGE, StatusViews, history_json
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
from cutover.engine.supervisor import Supervisor
from cutover.store.base import StateStore
from cutover.testing import FakeClock
from tests.unit.supervised import served, supervised
from tests.unit.test_runner import TrackedStore
from tests.unit.test_supervisor import CONFIG

Client = TestClient  # type: ignore[type-arg]
GUARD = 10.0  # real seconds a test may take before it fails as hung

#: The answer's keys in their order: the model's fields (PRODUCT.md's among them); the events
#: come last and only in the answers about one cutover.
KEYS = [f.alias or name for name, f in models.Cutover.model_fields.items() if name != "events"]


def _cutover(**kw: Any) -> Cutover:
    history = tuple(
        Measurement(verdict=Verdict.PASS, value=0.25 * i, at=1_700_000_000.0 + i) for i in range(3)
    )
    base = Cutover(
        id="co-1",
        service="checkout",
        from_color="blue",
        to_color="green",
        plan=Plan(
            stages=(Stage(weight=50, hold=60.0), Stage(weight=100, hold=60.0, approval=True)),
            checks=(CheckPolicy(name="health", failure_limit=3),),
        ),
        phase=Phase.HOLDING,
        hold_elapsed=12.34567,
        stage_elapsed=12.34567,
        checks=(
            CheckState(name="health", last=history[-1], history=history),
            CheckState(name="gone"),  # no policy any more, never measured
        ),
        routers=(
            RouterStatus(name="edge", kind="haproxy", desired=50, observed=50.0),
            RouterStatus(name="dns", kind="rfc2136", desired=50, ttl=30.0, written_at=1e9),
        ),
        created_at=1_700_000_000.0,
        updated_at=1_700_000_012.5,
        revision=3,
    )
    return replace(base, **kw)


def _briefed(body: bytes) -> bytes:
    """What the list says of a cutover whose full JSON is ``body``: each check without its
    history (re-encoded the way the views encode)."""
    decoded = _decoded(body)
    for check in decoded["checks"]:
        del check["history"]
    return json.dumps(decoded, separators=(",", ":")).encode()


def _decoded(body: bytes) -> dict[str, Any]:
    decoded = json.loads(body)
    assert isinstance(decoded, dict)
    return decoded


class EventStore:
    """Only what the views read of a store: ``events``, counted, optionally held up."""

    def __init__(self, events: Sequence[Event] = ()) -> None:
        self.journal = list(events)
        self.reads: list[int] = []  # after_seq of each read
        self.gate: asyncio.Event | None = None

    def append(self, *kinds: str) -> None:
        for kind in kinds:
            seq = len(self.journal) + 1
            self.journal.append(Event(kind=kind, message=f"{kind} {seq}", at=float(seq), seq=seq))

    async def events(self, cutover_id: str, after_seq: int = 0) -> list[Event]:
        self.reads.append(after_seq)
        found = [e for e in self.journal if e.seq > after_seq]
        if self.gate is not None:
            await self.gate.wait()
        return found


def _store(events: EventStore) -> StateStore:
    return events  # type: ignore[return-value]


def test_the_answer_has_the_contract_fields_in_order() -> None:
    body = _decoded(StatusViews().cutover(_cutover()))
    assert list(body) == KEYS
    assert body["hold_elapsed"] == 12.346 and body["updated_at"] == 1_700_000_012.5
    assert body["ttl_wait_left"] == 0.0
    assert body["routers"][0] == {
        "name": "edge",
        "type": "haproxy",
        "desired": 50,
        "observed": 50.0,
        "detail": "",
        "drift": False,
        "error": "",
        "ttl": 0.0,
        "clients_from": None,
    }
    assert body["routers"][1]["clients_from"] == 1e9 + 30
    health, gone = body["checks"]
    assert (health["status"], health["value"], health["failure_limit"]) == ("pass", 0.5, 3)
    assert health["history"][0] == {"verdict": "pass", "value": 0.0, "at": 1_700_000_000.0}
    assert (gone["status"], gone["failure_limit"], gone["dry_run"]) == (None, None, False)
    brief = _decoded(StatusViews().brief(_cutover()))
    assert list(brief) == KEYS and "history" not in brief["checks"][0]
    assert brief == _decoded(_briefed(StatusViews().cutover(_cutover())))


@pytest.mark.parametrize(
    "change",
    [
        {"hold_elapsed": 99.0004, "stage_elapsed": 99.0, "updated_at": 1_700_000_099.0},
        {"phase": Phase.PREFLIGHT, "ttl_wait": 30.0, "stage_elapsed": 7.5},  # ttl_wait_left
        {"phase": Phase.BAKING, "bake_elapsed": 12.25},  # bake_left
        {"status": Status.PAUSED},
        {"stage_index": 1, "revision": 4},
        {"reason": 'check "health" failed\x00\n\u2028 "hold_elapsed":null'},
        {"routers": (RouterStatus(name="edge", kind="haproxy", detail="\x00\x1f\\"),)},
    ],
)
def test_a_cached_answer_equals_a_fresh_encoding_after_any_change(change: dict[str, Any]) -> None:
    views = StatusViews()
    before = _cutover()
    views.cutover(before)
    views.brief(before)
    after = replace(before, **change)
    answer = views.cutover(after)
    assert answer == StatusViews().cutover(after)
    assert views.brief(after) == StatusViews().brief(after) == _briefed(answer)
    assert list(_decoded(answer)) == KEYS
    for field, value in change.items():
        if field in ("reason", "revision"):
            assert _decoded(answer)[field] == value


def test_each_form_is_encoded_only_when_an_answer_needs_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    encoded: list[bool] = []  # the history flag of each encoding
    body = views_module._body

    def counting(c: Cutover, *, history: bool = True) -> dict[str, Any]:
        encoded.append(history)
        return body(c, history=history)

    monkeypatch.setattr(views_module, "_body", counting)
    views = StatusViews()
    c = _cutover()
    for _ in range(3):
        views.brief(c)
    assert encoded == [False]  # a list needs only the brief form
    views.brief(replace(c))  # an equal cutover (a store read): not encoded again
    assert encoded == [False]
    views.brief(replace(c, hold_elapsed=50.0, stage_elapsed=50.0))  # the clocks moved
    assert encoded == [False, False]
    views.cutover(c)
    assert encoded == [False, False, True]


def test_the_same_cutover_object_is_answered_from_the_cache() -> None:
    views = StatusViews()
    c = _cutover()
    assert views.cutover(c) is views.cutover(c)
    # an equal object (a store read) is not re-encoded either
    assert views.cutover(replace(c)) == views.cutover(c)


async def test_events_are_read_once_per_revision_and_only_the_new_ones() -> None:
    views = StatusViews()
    store = EventStore()
    store.append("created", "preflight_passed")
    c = _cutover(revision=1)
    first = _decoded(await views.cutover_with_events(c, _store(store)))
    assert [e["seq"] for e in first["events"]] == [1, 2]
    assert list(first) == [*KEYS, "events"]
    assert first["events"][0] == {
        "seq": 1,
        "kind": "created",
        "at": 1.0,
        "message": "created 1",
        "data": {},
    }

    # the clocks move (same revision): no store read
    ticked = replace(c, hold_elapsed=20.0, updated_at=c.updated_at + 1)
    again = _decoded(await views.cutover_with_events(ticked, _store(store)))
    assert store.reads == [0]
    assert again["hold_elapsed"] == 20.0 and again["events"] == first["events"]

    # a save (new revision, new events): only the events after the last seen are read
    store.append("stage_applied")
    saved = replace(ticked, revision=2)
    later = _decoded(await views.cutover_with_events(saved, _store(store)))
    assert store.reads == [0, 2]
    assert [e["seq"] for e in later["events"]] == [1, 2, 3]
    assert later == _decoded(await StatusViews().cutover_with_events(saved, _store(store)))


async def test_concurrent_answers_do_not_duplicate_events() -> None:
    views = StatusViews()
    store = EventStore()
    store.append("created")
    store.gate = asyncio.Event()
    c = _cutover(revision=1)
    answers = [asyncio.create_task(views.cutover_with_events(c, _store(store))) for _ in range(3)]
    await asyncio.sleep(0)
    store.append("preflight_passed")  # lands while the first reads are held up
    late = asyncio.create_task(views.cutover_with_events(replace(c, revision=2), _store(store)))
    await asyncio.sleep(0)
    store.gate.set()
    bodies = [_decoded(b) for b in await asyncio.gather(*answers, late)]
    for body in bodies:
        seqs = [e["seq"] for e in body["events"]]
        assert seqs == sorted(set(seqs)) and seqs[0] == 1, seqs
    assert [e["seq"] for e in bodies[-1]["events"]] == [1, 2]


async def test_the_least_recently_used_cutover_is_dropped_past_the_bound() -> None:
    views = StatusViews(max_entries=2)
    store = EventStore()
    a, b, c = (_cutover(id=f"co-{n}", revision=1) for n in "abc")
    for each in (a, b, a, c):  # b is the least recently used when c comes
        await views.cutover_with_events(each, _store(store))
    assert store.reads == [0, 0, 0]
    await views.cutover_with_events(a, _store(store))
    assert store.reads == [0, 0, 0]  # a was kept
    await views.cutover_with_events(b, _store(store))
    assert store.reads == [0, 0, 0, 0]  # b was dropped, so read again


def test_list_service_and_history_shapes() -> None:
    views = StatusViews()
    c = _cutover()
    encoded = views.cutover(c)
    assert _decoded(views.services([])) == {"services": []}
    listed = _decoded(views.services([("checkout", "blue", encoded), ('we"ird', "green", None)]))
    assert listed == {
        "services": [
            {"name": "checkout", "live": "blue", "cutover": _decoded(encoded)},
            {"name": 'we"ird', "live": "green", "cutover": None},
        ]
    }
    assert _decoded(views.service("checkout", "blue", None)) == {
        "name": "checkout",
        "live": "blue",
        "cutover": None,
    }
    assert _decoded(history_json("checkout", [encoded, encoded])) == {
        "service": "checkout",
        "cutovers": [_decoded(encoded)] * 2,
    }


def _as_model(model: type[BaseModel], body: bytes) -> dict[str, Any]:
    """``body`` read through ``model`` (no undeclared field, every required one) and dumped
    back as the fields it held."""
    return model.model_validate_json(body).model_dump(
        mode="json", by_alias=True, exclude_unset=True
    )


@pytest.mark.parametrize(
    "change",
    [
        {},
        {"phase": Phase.PREFLIGHT, "ttl_wait": 30.0, "stage_elapsed": 7.5},
        {"status": Status.ROLLED_BACK, "reason": "health failed", "finished_at": 1.7e9},
        {"kind": "undo", "store_error": "disk full", "checks": ()},
    ],
)
async def test_every_encoded_answer_is_what_the_models_define(change: dict[str, Any]) -> None:
    views = StatusViews()
    c = _cutover(**change)
    events = EventStore()
    events.append("started", "stage_applied")
    full, brief = views.cutover(c), views.brief(c)
    with_events = await views.cutover_with_events(c, _store(events))
    answers: list[tuple[type[BaseModel], bytes]] = [
        (models.Cutover, full),
        (models.Cutover, brief),
        (models.Cutover, with_events),
        (models.ServiceList, views.services([("checkout", "blue", brief), ("pay", "green", None)])),
        (models.Service, views.service("checkout", "blue", with_events)),
        (models.History, history_json("checkout", [full, full])),
    ]
    for model, body in answers:
        assert _as_model(model, body) == json.loads(body), model.__name__
    assert [e["seq"] for e in _decoded(with_events)["events"]] == [1, 2]


def test_the_models_refuse_a_field_they_do_not_declare_and_a_missing_one() -> None:
    body = _decoded(StatusViews().cutover(_cutover()))
    with pytest.raises(ValidationError, match="extra"):
        models.Cutover.model_validate({**body, "surprise": 1})
    del body["revision"]
    with pytest.raises(ValidationError, match="revision"):
        models.Cutover.model_validate(body)


# --- through the app, with a running cutover ---------------------------------------------------


@dataclass
class Daemon:
    client: Client
    supervisor: Supervisor
    store: TrackedStore
    clock: FakeClock

    async def _idle(self) -> None:
        await self.store.idle.wait()

    async def advance(self, seconds: float) -> None:
        await self.clock.advance(seconds, step=0.25, settle=self._idle)

    async def settle(self, cutover_id: str) -> None:
        """Until the runner waits for the clock: no step or save in flight (the store may
        have a save's events before the runner has its cutover; an answer may say either)."""
        last = None
        while (now := await self.supervisor.get(cutover_id)) != last:
            last = now
            await self.clock.settle(settle=self._idle)

    async def expected(self, cutover_id: str) -> dict[str, Any]:
        """What an answer about the cutover must say now: encoded afresh, every event."""
        c = await self.supervisor.get(cutover_id)
        body = _decoded(StatusViews().cutover(c))
        body["events"] = [
            {"seq": e.seq, "kind": e.kind, "at": e.at, "message": e.message, "data": e.data}
            for e in await self.store.events(cutover_id)
        ]
        return body


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    store = TrackedStore(path=str(tmp_path / "state.db"))
    async with supervised(CONFIG, store) as s, served(s) as c:
        yield Daemon(c, s.supervisor, s.store, s.clock)


async def test_answers_follow_a_running_cutover(daemon: Daemon) -> None:
    async with asyncio.timeout(GUARD):
        started = await daemon.client.post("/v1/services/checkout/cutovers")
        assert started.status == 201 and "ETag" not in started.headers
        cutover_id = (await started.json())["id"]
        etags: dict[str, str] = {}  # answer -> its ETag
        revisions = set()
        for _ in range(12):  # through the first stage's hold into the second stage
            await daemon.settle(cutover_id)
            resp = await daemon.client.get(f"/v1/cutovers/{cutover_id}")
            assert resp.status == 200
            body = await resp.json()
            assert body == await daemon.expected(cutover_id)
            etags[json.dumps(body)] = resp.headers["ETag"]
            revisions.add(body["revision"])
            listed = await (await daemon.client.get("/v1/services")).json()
            (service,) = listed["services"]
            del body["events"]
            for check in body["checks"]:  # the list has no check history
                del check["history"]
            live = daemon.supervisor.live("checkout")
            assert service == {"name": "checkout", "live": live, "cutover": body}
            one = await (await daemon.client.get("/v1/services/checkout")).json()
            assert one["cutover"] == await daemon.expected(cutover_id)
            history = await (await daemon.client.get("/v1/services/checkout/cutovers")).json()
            assert history["cutovers"] == [await daemon.expected(cutover_id)]
            await daemon.advance(0.5)
        assert body["state"] == "completed" and len(revisions) > 2  # saves came in between
        assert len(set(etags.values())) == len(etags) >= 5  # one ETag per distinct answer


async def test_an_unchanged_answer_is_304_to_its_etag(daemon: Daemon) -> None:
    async with asyncio.timeout(GUARD):
        cutover_id = (await (await daemon.client.post("/v1/services/checkout/cutovers")).json())[
            "id"
        ]
        etags = {}
        await daemon.settle(cutover_id)
        for path in (f"/v1/cutovers/{cutover_id}", "/v1/services"):
            first = await daemon.client.get(path)
            etag = etags[path] = first.headers["ETag"]
            assert first.headers["Cache-Control"] == "no-cache"
            for asked in (etag, f"W/{etag}", f'"nope", {etag}', "*"):
                resp = await daemon.client.get(path, headers={"If-None-Match": asked})
                assert resp.status == 304, asked
                assert resp.headers["ETag"] == etag and await resp.read() == b""
            other = await daemon.client.get(path, headers={"If-None-Match": '"nope"'})
            assert other.status == 200 and await other.read() == await first.read()
        await daemon.advance(1.0)  # the hold moves on: new answers
        await daemon.settle(cutover_id)
        for path, etag in etags.items():
            resp = await daemon.client.get(path, headers={"If-None-Match": etag})
            assert resp.status == 200 and resp.headers["ETag"] != etag


def test_a_built_list_is_served_until_its_max_age_or_the_next_write() -> None:
    views = StatusViews()
    assert views.listing(0.0) is None
    entry = [("checkout", "blue", views.brief(_cutover()))]
    built = views.build_listing(entry, 100.0)
    assert views.listing(100.0 + LIST_MAX_AGE * 0.99) is built
    assert views.listing(100.0 + LIST_MAX_AGE) is None  # as old as it may be
    assert views.listing(100.0 + LIST_MAX_AGE, max_age=LIST_STALE_MAX_AGE) is built
    views.writes += 1  # an API write: the next list is built afresh
    assert views.listing(100.0) is None
    same = views.build_listing(entry, 101.0)
    assert same is built and same.etag == built.etag  # equal bytes keep their tag
    assert views.listing(101.0) is same
    moved = [("checkout", "blue", views.brief(_cutover(hold_elapsed=20.0)))]
    other = views.build_listing(moved, 102.0)
    assert other.etag != built.etag and other.body != built.body
    # tags are not reused by another process (a restarted daemon)
    assert StatusViews().build_listing(moved, 102.0).etag != other.etag


async def test_an_api_write_is_in_the_next_list_and_an_old_list_is_built_again(
    daemon: Daemon,
) -> None:
    async with asyncio.timeout(GUARD):
        before = await daemon.client.get("/v1/services")
        assert (await before.json())["services"][0]["cutover"] is None
        started = await daemon.client.post("/v1/services/checkout/cutovers")
        cutover_id = (await started.json())["id"]
        # the list before is younger than LIST_MAX_AGE, yet the write shows at once
        after = await daemon.client.get("/v1/services")
        assert (await after.json())["services"][0]["cutover"]["id"] == cutover_id
        assert after.headers["ETag"] != before.headers["ETag"]
        await daemon.settle(cutover_id)
        listed = await (await daemon.client.get("/v1/services")).json()
        await daemon.advance(1.0)  # the hold moves on and the list grows old
        await daemon.settle(cutover_id)
        fresh = await (await daemon.client.get("/v1/services")).json()
        elapsed = fresh["services"][0]["cutover"]["hold_elapsed"]
        assert elapsed > listed["services"][0]["cutover"]["hold_elapsed"]
        assert elapsed == round((await daemon.supervisor.get(cutover_id)).hold_elapsed, 3)


async def test_while_a_list_is_built_the_last_is_served_unless_an_api_write_came(
    daemon: Daemon,
) -> None:
    async with asyncio.timeout(GUARD):
        app = daemon.client.server.app
        first = await daemon.client.get("/v1/services")
        await daemon.clock.advance((LIST_MAX_AGE + LIST_STALE_MAX_AGE) / 2)  # the list is old
        async with app[LISTING]:  # as if another request were building the next list now
            stale = await daemon.client.get("/v1/services")
            assert stale.headers["ETag"] == first.headers["ETag"]
            await daemon.clock.advance(LIST_STALE_MAX_AGE)  # too old to serve: it waits
            waiting = asyncio.create_task(daemon.client.get("/v1/services"))
            await asyncio.sleep(0.05)
            assert not waiting.done()
        assert (await waiting).status == 200
        assert app[VIEWS].listing(daemon.clock.monotonic()) is not None  # built just now
        async with app[LISTING]:
            # a write makes the last list wrong for its writer: now a list waits for the build
            started = await daemon.client.post("/v1/services/checkout/cutovers")
            cutover_id = (await started.json())["id"]
            waiting = asyncio.create_task(daemon.client.get("/v1/services"))
            await asyncio.sleep(0.05)
            assert not waiting.done()
        fresh = await waiting
        assert (await fresh.json())["services"][0]["cutover"]["id"] == cutover_id


async def test_concurrent_pollers_of_an_old_list_start_one_build(daemon: Daemon) -> None:
    async with asyncio.timeout(GUARD):
        app = daemon.client.server.app
        views = app[VIEWS]
        first = await daemon.client.get("/v1/services")
        await daemon.clock.advance((LIST_MAX_AGE + LIST_STALE_MAX_AGE) / 2)
        builds = []
        build = views.build_listing

        def counted(*args: Any, **kwargs: Any) -> Any:
            builds.append(1)
            return build(*args, **kwargs)

        views.build_listing = counted  # type: ignore[method-assign]
        answers = await asyncio.gather(*(daemon.client.get("/v1/services") for _ in range(8)))
        assert {a.headers["ETag"] for a in answers} == {first.headers["ETag"]}  # the last list
        await asyncio.gather(*app[LIST_BUILDS])
        assert builds == [1]
        assert views.listing(daemon.clock.monotonic()) is not None  # the next one is built


async def test_the_list_is_gzipped_for_a_client_that_accepts_it(daemon: Daemon) -> None:
    async with asyncio.timeout(GUARD):
        await daemon.client.post("/v1/services/checkout/cutovers")
        packed = await daemon.client.get(
            "/v1/services", headers={"Accept-Encoding": "gzip"}, auto_decompress=False
        )
        plain = await daemon.client.get("/v1/services", headers={"Accept-Encoding": "identity"})
        assert "Content-Encoding" not in plain.headers
        assert plain.headers["Vary"] == "Accept-Encoding"
        assert packed.headers["Content-Encoding"] == "gzip"
        assert packed.headers["Vary"] == "Accept-Encoding"
        assert gzip.decompress(await packed.read()) == await plain.read()
        # a client that does not accept the compressed form still gets JSON
        again = await daemon.client.get("/v1/services", headers={"Accept-Encoding": "identity"})
        assert "Content-Encoding" not in again.headers
        assert await again.read() == await plain.read()
        # one content, two codings: two tags, and either one revalidates
        tags = (plain.headers["ETag"], packed.headers["ETag"])
        assert tags[0] != tags[1]
        for tag in tags:
            for coding in ("gzip", "identity"):
                resp = await daemon.client.get(
                    "/v1/services", headers={"If-None-Match": tag, "Accept-Encoding": coding}
                )
                assert resp.status == 304, (tag, coding)


@pytest.mark.parametrize(
    ("header", "gzip_ok"),
    [
        ("gzip", True),
        ("gzip, deflate, br", True),
        ("x-gzip", True),
        ("*", True),
        ("GZIP;q=0.5", True),
        ("", False),
        ("identity", False),
        ("deflate, br", False),
        ("gzip;q=0", False),
        ("gzip;q=0.000", False),
        ("*, gzip;q=0", False),
        ("gzip;q=nonsense", False),
        ("br;q=1, *;q=0", False),
    ],
)
def test_accept_encoding_allows_gzip_as_rfc_9110_says(header: str, gzip_ok: bool) -> None:
    assert accepts_gzip(header) is gzip_ok


def test_a_baking_cutover_shows_its_phase_bake_and_what_is_left_of_it() -> None:
    c = _cutover(phase=Phase.BAKING, stage_index=1, bake_elapsed=100.5)
    c = replace(c, plan=replace(c.plan, bake=300.0))
    views = StatusViews()
    body = _decoded(views.cutover(c))
    assert (body["phase"], body["bake"], body["bake_left"]) == ("baking", 300.0, 199.5)
    later = _decoded(views.cutover(replace(c, bake_elapsed=290.0)))  # a clock splice
    assert later["bake_left"] == 10.0
    assert _decoded(views.cutover(replace(c, bake_elapsed=None)))["bake_left"] == 300.0
