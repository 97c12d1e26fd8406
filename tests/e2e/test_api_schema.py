"""The published schema holds for what a running daemon really answers.

A daemon against a real HAProxy has one cutover rolled back and one holding at its first stage
with a measured check. Every ``GET`` answer (the services list, a service, a cutover with its
events, the history, the probes, a 404) is validated against the schema ``/openapi.json``
publishes for that path and status: every ``required`` field present, no field the spec does
not declare where it says ``additionalProperties: false``. A required field that the daemon
does not send, or a field it sends that the spec does not name, fails this test. The answers
of the operator commands (start, pause, a refused pause, resume with its body, abort) are held
to the spec the same way.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import jsonschema_rs

from tests.e2e.conftest import E2E

STAGES = [{"weight": 50, "hold": "10m"}, {"weight": 100, "hold": "1s"}]


def schema_errors(
    spec: dict[str, Any], path: str, status: int, answer: Any, method: str = "get"
) -> list[str]:
    """Why ``answer`` is not what ``spec`` says ``method path`` answers with ``status``."""
    response = spec["paths"][path][method]["responses"][str(status)]
    schema = response["content"]["application/json"]["schema"]
    # the components ride along so that each "#/components/schemas/..." resolves in place
    root = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "components": spec["components"],
        **schema,
    }
    validator = jsonschema_rs.validator_for(root)
    return [
        f"{'/'.join(map(str, e.instance_path))}: {e.message}" for e in validator.iter_errors(answer)
    ]


async def test_every_get_answer_of_a_running_daemon_matches_the_published_schema(
    e2e: E2E,
) -> None:
    e2e.write_config(stages=STAGES)
    await e2e.start_daemon()
    status, spec = await e2e.api("GET", "/openapi.json")
    assert status == 200, spec

    # Given a cutover rolled back by an operator and one holding with a measured check
    first = await e2e.start()
    status, aborted = await e2e.api("POST", f"/v1/cutovers/{first['id']}/abort")
    assert status == 200, aborted
    await e2e.wait_for(first["id"], state="rolled_back")
    running = await e2e.start()
    await e2e.wait_for(running["id"], state="running", stage=0, phase="holding")
    deadline = time.monotonic() + 10
    while not (await e2e.cutover(running["id"]))["checks"][0]["history"]:
        assert time.monotonic() < deadline, "the check never measured"
        await asyncio.sleep(0.1)

    answers = {
        ("/v1/services", "/v1/services"),
        ("/v1/services/{service}", "/v1/services/checkout"),
        ("/v1/services/{service}", "/v1/services/nope"),
        ("/v1/services/{service}/cutovers", "/v1/services/checkout/cutovers"),
        ("/v1/cutovers/{id}", f"/v1/cutovers/{running['id']}"),
        ("/v1/cutovers/{id}", f"/v1/cutovers/{first['id']}"),
        ("/v1/cutovers/{id}", "/v1/cutovers/nope"),
        ("/healthz", "/healthz"),
        ("/readyz", "/readyz"),
    }
    checked: dict[str, int] = {}
    for template, path in sorted(answers):
        status, answer = await e2e.api("GET", path)
        assert status in (200, 404), (path, status, answer)
        errors = schema_errors(spec, template, status, answer)
        assert not errors, (path, errors, answer)
        checked[path] = status

    # the answers exercised every shape: both cutovers listed, routers read back, checks run
    status, history = await e2e.api("GET", "/v1/services/checkout/cutovers")
    assert [c["state"] for c in history["cutovers"]] == ["running", "rolled_back"]
    live = await e2e.cutover(running["id"])
    assert live["routers"][0]["observed"] == 50.0, live["routers"]
    assert live["events"] and live["checks"][0]["history"], live
    assert checked["/v1/cutovers/nope"] == 404 and checked["/v1/services/nope"] == 404


async def test_command_answers_match_the_published_schema(e2e: E2E) -> None:
    e2e.write_config(stages=STAGES)
    await e2e.start_daemon()
    _, spec = await e2e.api("GET", "/openapi.json")
    c = await e2e.start()
    assert not schema_errors(spec, "/v1/services/{service}/cutovers", 201, c, "post"), c
    await e2e.wait_for(c["id"], state="running", stage=0, phase="holding")

    # pause, a refused second pause, resume with its flag in the body, then abort
    for command, body, expected in [
        ("pause", None, 200),
        ("pause", None, 409),
        ("resume", {"reapply": False}, 200),
        ("abort", None, 200),
    ]:
        path = f"/v1/cutovers/{c['id']}/{command}"
        status, answer = await e2e.api("POST", path, json=body)
        assert status == expected, (command, status, answer)
        template = f"/v1/cutovers/{{id}}/{command}"
        errors = schema_errors(spec, template, status, answer, "post")
        assert not errors, (command, errors, answer)
    await e2e.wait_for(c["id"], state="rolled_back")
