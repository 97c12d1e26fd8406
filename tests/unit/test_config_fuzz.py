"""Hypothesis-generated configs never crash the loader: only ConfigError, every error located.

Three generators feed :func:`cutover.config.parse_config` / :func:`load_config`:

* random YAML-ish structures (mappings, lists, scalars of every YAML type) whose keys are
  mostly the config's own words, so they reach deep into the specs;
* structural mutations of ``config/cutover.example.yaml`` and ``config/dns.example.yaml``
  (replace a value at a random place with another structure, delete a key, add an unknown key,
  append to a list), so most of the config stays valid and one place breaks;
* line edits of the example YAML *text* (delete, duplicate, swap, splice in noise), through
  :func:`load_config`, for the YAML-level errors.

The property: either a :class:`Config` comes back (and every service still builds its plan),
or a :class:`ConfigError` whose every line is ``<place>: <message>``, the place starting at a
top-level key of the input (or the file's path). ``make test`` runs :data:`QUICK` examples per
generator; ``make test-long`` (marker ``long``) runs :data:`FULL`. A few generated files also go
through ``cutover validate`` as a process: exit 0 or 2, never a traceback.
"""

from __future__ import annotations

import contextlib
import copy
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cutover.config import Config, load_config, parse_config, shown_key
from cutover.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = {
    name: (ROOT / "config" / name).read_text()
    for name in ("cutover.example.yaml", "dns.example.yaml")
}
#: Examples per generator in ``make test`` and in ``make test-long``.
QUICK, FULL = 300, 5000
COUNTS = [pytest.param(QUICK, id="quick"), pytest.param(FULL, id="full", marks=pytest.mark.long)]

#: The config's own words, so random mappings hit real specs more often than not.
WORDS = [
    "api",
    "listen",
    "tokens",
    "name",
    "role",
    "sha256",
    "tls",
    "cert",
    "key",
    "state",
    "sqlite",
    "notify",
    "type",
    "url",
    "services",
    "checkout",
    "live",
    "blue",
    "green",
    "routers",
    "edge",
    "haproxy",
    "runtime_api",
    "backend",
    "timeout",
    "rfc2136",
    "server",
    "zone",
    "record",
    "ttl",
    "tsig",
    "algorithm",
    "secret_file",
    "secret_env",
    "powerdns",
    "api_url",
    "api_key_file",
    "server_id",
    "stages",
    "weight",
    "hold",
    "approval",
    "approval_timeout",
    "allow_hold_below_ttl",
    "checks",
    "http",
    "prometheus",
    "compare",
    "query",
    "max",
    "min",
    "max_ratio",
    "margin",
    "interval",
    "failure_limit",
    "window",
    "on_no_data",
    "inconclusive_limit",
    "on_inconclusive",
    "error_limit",
    "on_error",
    "initial_delay",
    "dry_run",
    "expect_status",
    "on_drift",
    "apply_timeout",
    "rollback_timeout",
    "undo_window",
    "webhook",
    "format",
    "token_file",
    "token_env",
    "events",
    "rolled_back",
    "refused",
    "bake",
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(WORDS),
    st.sampled_from(["5s", "1m", "300ms", "0s", "-1s", "1h30m", "10x", "unix:/x", "tcp:1.2.3.4:1"]),
    st.sampled_from(["{{new}}", "{{old}}", "{{nope}}", "127.0.0.1:8480", "0.0.0.0:1", "[::1]:1"]),
    st.sampled_from(["http://u:p@127.0.0.1:1/h", "https:///h", "http://h:0/", "http://h:99999/"]),
    st.binary(max_size=8),
    st.dates(),
)
keys = st.one_of(st.sampled_from(WORDS), st.text(max_size=8), st.integers(), st.none())
structures = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=5)),
    max_leaves=25,
)
top_level = st.dictionaries(
    st.sampled_from(["api", "state", "notify", "services", "extra"]), structures, max_size=4
)


def located(error: str, data: object, source: str) -> bool:
    place, sep, message = error.partition(": ")
    if not sep or not message.strip() or "\n" in error or "Traceback" in error:
        return False
    heads = {"api", "state", "notify", "services"}  # a missing required key is its own place
    if isinstance(data, dict):  # a key as the place shows it: cut short, or quoted
        heads |= {str(k) for k in data} | {shown_key(k) for k in data if isinstance(k, str)}
    return place == source or any(place == h or place.startswith((f"{h}.", f"{h}[")) for h in heads)


def assert_parses_or_locates(data: object) -> None:
    try:
        config = parse_config(data)
    except ConfigError as exc:
        assert exc.errors, "a ConfigError with no error"
        bad = [e for e in exc.errors if not located(e, data, "<config>")]
        assert not bad, f"errors without a place: {bad}"
        return
    assert isinstance(config, Config)
    for spec in config.services.values():
        spec.plan()


# --- structural mutations of the examples -------------------------------------------------------


def _places(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _places(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _places(v, (*path, i))
    return out


def _touches(path: tuple[Any, ...], protected: tuple[tuple[Any, ...], ...]) -> bool:
    """Is ``path`` a protected place, inside one, or on the way to one?"""
    return any(p[: len(path)] == path or path[: len(p)] == p for p in protected)


@st.composite
def mutated_examples(
    draw: st.DrawFn,
    base: dict[str, Any] | None = None,
    protected: tuple[tuple[Any, ...], ...] = (),
) -> dict[str, Any]:
    """An example (or ``base``) with 1-4 random mutations, none at a ``protected`` place."""
    data: dict[str, Any] = copy.deepcopy(
        base or yaml.safe_load(draw(st.sampled_from(list(EXAMPLES.values()))))
    )
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        places = _places(data)
        path = draw(st.sampled_from([p for p in places[1:] if not _touches(p, protected)]))
        parent: Any = data
        for part in path[:-1]:
            parent = parent[part]
        last = path[-1]
        how = draw(st.sampled_from(["replace", "delete", "add", "append", "copy"]))
        if how == "replace":
            parent[last] = draw(structures)
        elif how == "delete" and isinstance(parent, dict):
            del parent[last]
        elif how == "add" and isinstance(parent[last], dict):
            parent[last][draw(keys)] = draw(structures)
        elif how == "append" and isinstance(parent[last], list):
            parent[last].append(draw(structures))
        elif how == "copy":  # another place's value here: plausible, often wrong-typed
            src: Any = data
            for part in draw(st.sampled_from(places)):
                src = src[part]
            parent[last] = copy.deepcopy(src)
    return data


# --- line edits of the example text -------------------------------------------------------------

NOISE = ["  ", "- ", ": ", "{", "]", "&a", "*a", "!!str", "'", '"', "\t", "#", "? ", "|", "%"]


@st.composite
def edited_texts(draw: st.DrawFn) -> str:
    lines = draw(st.sampled_from(list(EXAMPLES.values()))).splitlines()
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        i = draw(st.integers(min_value=0, max_value=len(lines) - 1))
        how = draw(st.sampled_from(["delete", "duplicate", "swap", "splice", "dedent"]))
        if how == "delete":
            del lines[i]
        elif how == "duplicate":
            lines.insert(i, lines[i])
        elif how == "swap" and i + 1 < len(lines):
            lines[i], lines[i + 1] = lines[i + 1], lines[i]
        elif how == "splice":
            at = draw(st.integers(min_value=0, max_value=len(lines[i])))
            noise = draw(st.one_of(st.sampled_from(NOISE), st.text(max_size=4)))
            lines[i] = lines[i][:at] + noise + lines[i][at:]
        elif how == "dedent":
            lines[i] = lines[i].lstrip()
    return "\n".join(lines) + "\n"


def _run(examples: int, strategy: st.SearchStrategy[Any], check: Any) -> None:
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(strategy)
    def prop(value: Any) -> None:
        check(value)

    prop()


@pytest.mark.parametrize("examples", COUNTS)
def test_random_structures_only_give_located_errors(examples: int) -> None:
    _run(examples, top_level, assert_parses_or_locates)


@pytest.mark.parametrize("examples", COUNTS)
def test_mutated_examples_only_give_located_errors(examples: int) -> None:
    _run(examples, mutated_examples(), assert_parses_or_locates)


def _with_pass_two_errors() -> dict[str, Any]:
    """The example with a service ``payments`` that only pass 2 finds wrong: its router
    drives checkout's backend servers, and its last stage is not 100."""
    data: dict[str, Any] = yaml.safe_load(EXAMPLES["cutover.example.yaml"])
    payments = copy.deepcopy(data["services"]["checkout"])
    payments["stages"][-1]["weight"] = 90
    data["services"]["payments"] = payments
    return data


@pytest.mark.parametrize("examples", COUNTS)
def test_a_shape_error_elsewhere_never_hides_a_pass_two_error(examples: int) -> None:
    base = _with_pass_two_errors()
    last = len(base["services"]["payments"]["stages"]) - 1
    protected = (("services", "payments"), ("services", "checkout", "routers", 0))

    def check(data: dict[str, Any]) -> None:
        with pytest.raises(ConfigError) as info:
            parse_config(data)
        errors = info.value.errors
        assert f"services.payments.stages[{last}].weight: the last stage must be 100" in errors
        shared = [e for e in errors if e.startswith("services.payments.routers[0]: shares ")]
        assert shared and "with services.checkout.routers[0];" in shared[0], errors

    _run(examples, mutated_examples(base=base, protected=protected), check)


@pytest.mark.parametrize("examples", COUNTS)
def test_edited_yaml_text_only_gives_located_errors(examples: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cutover.yaml"

        def check(text: str) -> None:
            path.write_text(text)
            try:
                load_config(path)
            except ConfigError as exc:
                assert exc.errors
                data: Any = None
                # a YAML-level error is located by the file's path
                with contextlib.suppress(yaml.YAMLError, ValueError, RecursionError):
                    data = yaml.safe_load(text)
                bad = [
                    e
                    for e in exc.errors
                    if not (e.startswith(f"{path}:") or located(e, data, "<config>"))
                ]
                assert not bad, f"errors without a place: {bad}"

        _run(examples, edited_texts(), check)


def test_cutover_validate_on_generated_files_exits_0_or_2_without_a_traceback(
    tmp_path: Path,
) -> None:
    files: list[Path] = []

    @settings(max_examples=6, deadline=None, database=None)
    @given(st.one_of(mutated_examples(), top_level))
    def collect(data: Any) -> None:
        path = tmp_path / f"gen-{len(files)}.yaml"
        path.write_text(yaml.safe_dump(data, allow_unicode=True))
        files.append(path)

    collect()
    for path in files[:6]:
        proc = subprocess.run(
            [sys.executable, "-m", "cutover", "validate", "-c", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode in (0, 2), (proc.returncode, proc.stderr)
        assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
        if proc.returncode == 2:
            assert "config error" in proc.stderr, proc.stderr
