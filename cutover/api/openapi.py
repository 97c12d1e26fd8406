"""The OpenAPI 3.1 description of the API, kept true by a test that walks the routes.

The shapes of answers and request bodies (``components.schemas``) are generated from the
models of :mod:`cutover.api.models`, the one definition the encoder is tested against; the
paths, written here, refer to them.

Every ``/v1`` operation declares the bearer scheme and its refusals (401; 403 for a POST,
which needs an operator token) in one place, :func:`_secured`, rather than per operation; every
``/v1`` GET its ETag and 304 answer in :func:`_conditional`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from cutover import __version__
from cutover.api.models import PromoteRequest, ResumeRequest, component_schemas

__all__ = ["openapi_spec"]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERR = _json(_ref("Error"), "error")
_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
_SERVICE = {"name": "service", "in": "path", "required": True, "schema": {"type": "string"}}
_ACTOR = {
    "name": "X-Cutover-Actor",
    "in": "header",
    "required": False,
    "description": "who acts, recorded in the event timeline. With api.tokens configured the "
    "actor is the token's name and this header only adds who used it: "
    '"release-bot (via alice@laptop)"',
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9@._:/+-]{1,64}$"},
}
_NO_BODY = {
    "required": False,
    "content": {"application/json": {"schema": {"type": "object", "maxProperties": 0}}},
}


_NOT_NOW = "invalid_state: the command does not apply in this state"


def _action(
    verb: str, what: str, *, body: type[BaseModel] | None = None, refusal: str = ""
) -> dict[str, Any]:
    """An operator command; ``body`` is the model of the one boolean flag its body may carry
    and ``refusal`` the 409 code that flag overrides (with what it names)."""
    request: dict[str, Any] = _NO_BODY
    responses: dict[str, Any] = {
        "200": _json(_ref("Cutover"), "the cutover after the command"),
        "400": _ERR,
        "404": _ERR,
        "409": _json(_ref("Error"), f"{_NOT_NOW}; {refusal}" if refusal else _NOT_NOW),
    }
    if body is not None:
        (flag,) = body.model_fields
        request = {
            "required": False,
            "content": {"application/json": {"schema": _ref(body.__name__)}},
        }
        responses["422"] = {**_ERR, "description": f"invalid_body: {flag} is not a boolean"}
    return {
        "post": {
            "summary": what,
            "operationId": f"{verb}Cutover",
            "parameters": [_ID, _ACTOR],
            "requestBody": request,
            "responses": responses,
        }
    }


_BEARER = {
    "type": "http",
    "scheme": "bearer",
    "description": "A token from api.tokens (the config keeps only its sha256). Needed on /v1 "
    "when tokens are configured: a viewer may GET, an operator may also POST. Without tokens "
    "the daemon listens on loopback only and needs none.",
}
_UNAUTHORIZED = {
    **_ERR,
    "description": "no bearer token, or one that is not configured",
    "headers": {
        "WWW-Authenticate": {
            "required": True,
            "description": "RFC 6750 challenge: Bearer",
            "schema": {"type": "string"},
        }
    },
}
_FORBIDDEN = {**_ERR, "description": "a viewer token: this needs an operator token"}


_IF_NONE_MATCH = {
    "name": "If-None-Match",
    "in": "header",
    "required": False,
    "description": "the ETag of an earlier answer: 304 without a body while it is still the "
    "answer (RFC 9110 §13.1.2; weak comparison, * matches any)",
    "schema": {"type": "string"},
}
_VALIDATOR_HEADERS = {
    "ETag": {
        "required": True,
        "description": "a strong validator of this answer's bytes",
        "schema": {"type": "string"},
    },
    "Cache-Control": {
        "required": True,
        "description": "no-cache: a cache must revalidate before reusing the answer",
        "schema": {"type": "string"},
    },
}
_NOT_MODIFIED = {
    "description": "If-None-Match named the current answer's ETag: nothing changed",
    "headers": _VALIDATOR_HEADERS,
}


def _conditional(paths: dict[str, Any]) -> dict[str, Any]:
    """Let every /v1 GET be revalidated: its 200 carries an ETag, If-None-Match gets 304."""
    for path, operations in paths.items():
        op = operations.get("get")
        if not path.startswith("/v1/") or op is None:
            continue
        op["parameters"] = [*op.get("parameters", []), _IF_NONE_MATCH]
        op["responses"]["200"] = {**op["responses"]["200"], "headers": _VALIDATOR_HEADERS}
        op["responses"]["304"] = _NOT_MODIFIED
    return paths


def _limited(paths: dict[str, Any]) -> dict[str, Any]:
    """Add the answers of the API's limits (cutover.api.listener): a request line or header
    over 8190 bytes to every operation; a body over 64 KiB or not in time to every POST."""
    for operations in paths.values():
        for method, op in operations.items():
            op["responses"]["431"] = {
                **_ERR,
                "description": "header_too_large: a request line or header over 8190 bytes",
            }
            if method == "post":
                op["responses"]["408"] = {
                    **_ERR,
                    "description": "body_timeout: the body did not arrive within "
                    "api.header_timeout",
                }
                op["responses"]["413"] = {**_ERR, "description": "body_too_large: over 64 KiB"}
    return paths


def _secured(paths: dict[str, Any]) -> dict[str, Any]:
    """Add the bearer requirement and its 401/403 answers to every /v1 operation."""
    for path, operations in paths.items():
        if not path.startswith("/v1/"):
            continue
        for method, op in operations.items():
            op["security"] = [{"bearer": []}]
            op["responses"]["401"] = _UNAUTHORIZED
            if method == "post":
                op["responses"]["403"] = _FORBIDDEN
    return paths


def openapi_spec() -> dict[str, Any]:
    status = _ref("ProbeStatus")
    spec: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "cutover", "version": __version__},
        "paths": _secured(
            {
                "/": {
                    "get": {
                        "summary": "the on-call status page (open; with tokens configured it "
                        "asks for a viewer token for its /v1 calls)",
                        "operationId": "statusPage",
                        "responses": {
                            "200": {
                                "description": "one HTML document",
                                "content": {"text/html": {"schema": {"type": "string"}}},
                            }
                        },
                    }
                },
                "/healthz": {
                    "get": {
                        "summary": "process alive",
                        "operationId": "healthz",
                        "responses": {"200": _json(status, "alive")},
                    }
                },
                "/readyz": {
                    "get": {
                        "summary": "config loaded, store open and writable, engine running",
                        "operationId": "readyz",
                        "responses": {
                            "200": _json(status, "ready"),
                            "503": {
                                **_ERR,
                                "description": "not_ready (the engine is starting) or "
                                "store_unwritable (the message names the store and why)",
                            },
                        },
                    }
                },
                "/metrics": {
                    "get": {
                        "summary": "Prometheus text format",
                        "operationId": "metrics",
                        "responses": {
                            "200": {"description": "metrics", "content": {"text/plain": {}}}
                        },
                    }
                },
                "/openapi.json": {
                    "get": {
                        "summary": "this document",
                        "operationId": "openapi",
                        "responses": {"200": _json({"type": "object"}, "spec")},
                    }
                },
                "/v1/services": {
                    "get": {
                        "summary": "every service with its live color and running or last cutover",
                        "description": "Each cutover without its event timeline and without "
                        "each check's history (GET /v1/cutovers/{id} has both). The list is "
                        "built at most every 0.25 s and no answer is older than 0.5 s; an API "
                        "write (start, undo, a command) is in the next answer. Sent with "
                        "Content-Encoding: gzip to a client whose Accept-Encoding allows it "
                        "(Vary: Accept-Encoding).",
                        "operationId": "listServices",
                        "responses": {"200": _json(_ref("ServiceList"), "services")},
                    }
                },
                "/v1/services/{service}": {
                    "get": {
                        "summary": "one service",
                        "operationId": "getService",
                        "parameters": [_SERVICE],
                        "responses": {"200": _json(_ref("Service"), "the service"), "404": _ERR},
                    }
                },
                "/v1/services/{service}/cutovers": {
                    "post": {
                        "summary": "preflight, then start a cutover from the live color",
                        "operationId": "startCutover",
                        "parameters": [_SERVICE, _ACTOR],
                        "requestBody": _NO_BODY,
                        "responses": {
                            "201": _json(_ref("Cutover"), "started"),
                            "400": _ERR,
                            "404": _ERR,
                            "409": _json(_ref("Error"), "a cutover already runs"),
                            "422": _json(
                                _ref("Error"),
                                "preflight refused; nothing changed (kept in history as refused)",
                            ),
                        },
                    },
                    "get": {
                        "summary": "history, newest first",
                        "operationId": "serviceHistory",
                        "parameters": [
                            _SERVICE,
                            {
                                "name": "limit",
                                "in": "query",
                                "required": False,
                                "schema": {"type": "integer", "minimum": 1, "maximum": 500},
                            },
                        ],
                        "responses": {
                            "200": _json(_ref("History"), "history"),
                            "400": _ERR,
                            "404": _ERR,
                        },
                    },
                },
                "/v1/services/{service}/undo": {
                    "post": {
                        "summary": "within undo_window: all traffic back to the previous color "
                        "at once",
                        "operationId": "undoCutover",
                        "parameters": [_SERVICE, _ACTOR],
                        "requestBody": _NO_BODY,
                        "responses": {
                            "201": _json(
                                _ref("Cutover"),
                                "undo started: a rollback of the last completed cutover (its "
                                "from/to and frozen routers), already rolling_back",
                            ),
                            "400": _ERR,
                            "404": _ERR,
                            "409": _json(
                                _ref("Error"),
                                "code cutover_running, nothing_to_undo (none completed, or "
                                "already undone) or undo_window_passed",
                            ),
                            "422": _json(
                                _ref("Error"),
                                "a router cannot be read; nothing changed (kept in history as "
                                "refused)",
                            ),
                        },
                    }
                },
                "/v1/cutovers/{id}": {
                    "get": {
                        "summary": "one cutover with its event timeline",
                        "operationId": "getCutover",
                        "parameters": [_ID],
                        "responses": {"200": _json(_ref("Cutover"), "the cutover"), "404": _ERR},
                    }
                },
                "/v1/cutovers/{id}/pause": _action("pause", "pause the cutover"),
                "/v1/cutovers/{id}/resume": _action(
                    "resume",
                    "resume a paused cutover",
                    body=ResumeRequest,
                    refusal="drift: paused on drift and reapply not given; the message names "
                    "each drifted router, the share the daemon last wrote and what it reads",
                ),
                "/v1/cutovers/{id}/promote": _action(
                    "promote",
                    "pass the current stage's hold or approval gate, or end the bake",
                    body=PromoteRequest,
                    refusal="checks_not_passing: an acting check's latest counting measurement "
                    "at this stage is not pass and force not given; the message names each",
                ),
                "/v1/cutovers/{id}/abort": _action("abort", "roll back at once"),
            }
        ),
        "components": {"schemas": component_schemas(), "securitySchemes": {"bearer": _BEARER}},
    }
    _conditional(spec["paths"])
    _limited(spec["paths"])
    return spec
