"""Microbenchmark: encoding one cutover's status answer, per encoder (issue 19, item 5).

Not a test. One cutover as the scale benchmark holds it (two stages, one HAProxy router, one
HTTP check with its full history of 20 measurements), encoded as ``GET /v1/cutovers/{id}``
answers it (without events):

* ``views, unchanged``     :class:`StatusViews` answering an equal cutover (a store read):
  the cached bytes;
* ``views, changed``       what any step that changed the cutover costs, its clocks included:
  the answer's dict built and encoded by stdlib ``json``;
* ``dict + <encoder>``     the answer's dict built from the cutover and encoded in one call:
  ``pydantic_core.to_json``, and orjson and msgspec when importable;
* ``model + dump_json``    the dict read into :class:`cutover.api.models.Cutover`
  (validation) and written by ``model_dump_json``: the encoding the models would drive.

    .venv/bin/python benchmarks/status_encoding.py
"""

from __future__ import annotations

import importlib
import sys
import timeit
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pydantic_core  # noqa: E402

from cutover.api import models  # noqa: E402
from cutover.api.views import StatusViews, _body  # noqa: E402
from cutover.core.model import (  # noqa: E402
    HISTORY_KEPT,
    CheckPolicy,
    CheckState,
    Cutover,
    Measurement,
    Phase,
    Plan,
    RouterStatus,
    Stage,
    Verdict,
)

ROUNDS = 20_000


def sample() -> Cutover:
    history = tuple(
        Measurement(verdict=Verdict.PASS, value=0.012 * i, at=1.7e9 + 5 * i, detail="200 OK")
        for i in range(HISTORY_KEPT)
    )
    return Cutover(
        id="co-0123456789ab",
        service="svc-0042",
        from_color="blue",
        to_color="green",
        plan=Plan(
            stages=(Stage(weight=50, hold=3600.0), Stage(weight=100, hold=60.0)),
            checks=(CheckPolicy(name="health", interval=5.0),),
        ),
        phase=Phase.HOLDING,
        hold_elapsed=123.456,
        stage_elapsed=123.456,
        checks=(CheckState(name="health", last=history[-1], history=history),),
        routers=(
            RouterStatus(
                name="edge", kind="haproxy", desired=50, observed=50.0, detail="2/4 servers"
            ),
        ),
        created_at=1.7e9,
        updated_at=1.7e9 + 123.5,
        revision=7,
    )


def encoders() -> dict[str, Callable[[Any], bytes]]:
    found: dict[str, Callable[[Any], bytes]] = {"pydantic_core.to_json": pydantic_core.to_json}
    for name, attr in (("orjson", "dumps"), ("msgspec", "json.encode")):
        try:
            module: Any = importlib.import_module(name)
        except ImportError:
            continue
        for part in attr.split("."):
            module = getattr(module, part)
        found[name] = module
    return found


def main() -> None:
    c = sample()
    views = StatusViews()
    views.cutover(c)
    moved = [
        replace(c, hold_elapsed=c.hold_elapsed + i, updated_at=c.updated_at + i) for i in (1, 2)
    ]
    equal = [c, replace(c)]
    tick = iter(range(10**9))

    cases: dict[str, Callable[[], Any]] = {
        "views, unchanged": lambda: views.cutover(equal[next(tick) % 2]),
        "views, changed": lambda: views.cutover(moved[next(tick) % 2]),
    }
    for name, encode in encoders().items():
        cases[f"dict + {name}"] = lambda encode=encode: encode(_body(c))  # type: ignore[misc]
    cases["model + dump_json"] = lambda: models.Cutover.model_validate(_body(c)).model_dump_json(
        by_alias=True
    )
    size = len(views.cutover(c))
    print(f"one cutover answer, {size} bytes; best of 5 x {ROUNDS} rounds, microseconds each")
    for name, case in cases.items():
        best = min(timeit.repeat(case, number=ROUNDS, repeat=5)) / ROUNDS
        print(f"{name:<28} {best * 1e6:8.1f}")


if __name__ == "__main__":
    main()
