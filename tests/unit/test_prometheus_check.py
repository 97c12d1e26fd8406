"""Prometheus and compare checks without a server: answer parsing, the one-value rule, the
verdicts, measure()'s branches over a stub client, and config validation by place."""

from __future__ import annotations

import math
from typing import Any

import pytest
import yaml

from cutover.checks.base import MeasureContext
from cutover.checks.compare import CompareCheck, CompareCheckSpec
from cutover.checks.compare import judge as judge_compare
from cutover.checks.prometheus import PrometheusCheck, PrometheusCheckSpec
from cutover.checks.prometheus import judge as judge_threshold
from cutover.checks.promql import (
    Answer,
    NoData,
    QueryFailed,
    Series,
    fmt,
    parse_answer,
    single_value,
)
from cutover.config import parse_config
from cutover.core.model import Verdict
from cutover.errors import ConfigError
from cutover.testing import resource_pool

PLACEHOLDERS = {"new": "green", "old": "blue", "service": "checkout"}
PASS, FAIL, INCONCLUSIVE, ERROR = (
    Verdict.PASS,
    Verdict.FAIL,
    Verdict.INCONCLUSIVE,
    Verdict.ERROR,
)


def vector(*values: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    def metric(i: int) -> dict[str, str]:
        return {**(labels or {}), **({"i": str(i)} if len(values) > 1 else {})}

    result = [{"metric": metric(i), "value": [1795671060.8, v]} for i, v in enumerate(values)]
    return {"status": "success", "data": {"resultType": "vector", "result": result}}


def answer(*values: float) -> Answer:
    return Answer(series=tuple(Series(labels={"i": str(i)}, value=v) for i, v in enumerate(values)))


# --- parse_answer: Prometheus's JSON shapes (recipes/lb-and-metrics.md §6) --------------------


@pytest.mark.parametrize(
    ("status", "body", "values"),
    [
        (200, vector("11.5"), [11.5]),
        (200, vector("1", "0", labels={"job": "app"}), [1.0, 0.0]),
        (200, vector(), []),
        (200, vector("NaN"), [math.nan]),
        (200, vector("+Inf"), [math.inf]),
        (200, {"status": "success", "data": {"resultType": "scalar", "result": [1.0, "2"]}}, [2]),
    ],
    ids=["value", "labelled", "empty", "nan", "inf", "scalar"],
)
def test_parse_answer(status: int, body: Any, values: list[float]) -> None:
    got = [s.value for s in parse_answer(status, body).series]
    assert len(got) == len(values)
    for g, v in zip(got, values, strict=True):
        assert (math.isnan(g) and math.isnan(v)) or g == v


def test_parse_answer_keeps_labels() -> None:
    parsed = parse_answer(200, vector("1", labels={"job": "app"}))
    assert parsed.series[0].labels == {"job": "app"}


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (
            400,
            {
                "status": "error",
                "errorType": "bad_data",
                "error": 'invalid parameter "query": 1:35: parse error: unclosed left parenthesis',
            },
            'Prometheus: HTTP 400 bad_data: invalid parameter "query": 1:35: parse error: '
            "unclosed left parenthesis",
        ),
        (
            422,
            {"status": "error", "errorType": "execution", "error": "found duplicate series"},
            "Prometheus: HTTP 422 execution: found duplicate series",
        ),
        (
            503,
            {"status": "error", "errorType": "timeout", "error": "query timed out"},
            "Prometheus: HTTP 503 timeout: query timed out",
        ),
        (
            200,
            {"status": "success", "data": {"resultType": "matrix", "result": []}},
            "the query gives a range vector (matrix)",
        ),
        (
            200,
            {"status": "success", "data": {"resultType": "string", "result": [1, "x"]}},
            "the query gives a string",
        ),
        (200, {"status": "success", "data": {"resultType": "vector"}}, "malformed"),
        (200, {"status": "success", "data": {"resultType": "vector", "result": [{}]}}, "malformed"),
        (200, vector("abc"), "malformed"),
        (200, [1, 2], "HTTP 200, not a Prometheus answer"),
    ],
    ids=[
        "bad-query",
        "execution",
        "timeout",
        "matrix",
        "string",
        "no-result",
        "no-value",
        "not-a-number",
        "not-an-object",
    ],
)
def test_parse_answer_errors(status: int, body: Any, expected: str) -> None:
    with pytest.raises(QueryFailed) as info:
        parse_answer(status, body)
    assert str(info.value).startswith(expected)


# --- single_value: one value, no data, or an error --------------------------------------------


@pytest.mark.parametrize(
    ("values", "reduce", "expected"),
    [
        ((0.5,), None, 0.5),
        ((math.inf,), None, math.inf),  # data: e.g. a quantile beyond the highest bucket
        ((), None, NoData(reason="empty result")),
        ((), "max", NoData(reason="empty result")),
        ((math.nan,), None, NoData(reason="NaN")),
        ((1.0, 3.0, 2.0), "max", 3.0),
        ((1.0, 3.0, 2.0), "min", 1.0),
        ((1.0, 3.0, 2.0), "sum", 6.0),
        ((1.0, math.nan, 2.0), "max", 2.0),  # a NaN series carries no data
        ((math.nan, math.nan), "sum", NoData(reason="NaN")),
        ((math.inf, -math.inf), "sum", NoData(reason="NaN")),
    ],
)
def test_single_value(values: tuple[float, ...], reduce: Any, expected: float | NoData) -> None:
    assert single_value(answer(*values), reduce) == expected


def test_several_series_without_reduce_is_an_error_naming_the_count() -> None:
    with pytest.raises(QueryFailed) as info:
        single_value(answer(1.0, 2.0, 3.0, 4.0), None)
    detail = str(info.value)
    assert detail.startswith('the query gives 4 series ({i="0"}, {i="1"}, {i="2"} and 1 more)')
    assert "reduce: max|min|sum" in detail


# --- verdicts -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "high", "low", "verdict", "detail"),
    [
        (0.005, 0.05, None, PASS, "0.005 <= max 0.05"),
        (0.0312, 0.01, None, FAIL, "0.0312 > max 0.01"),
        (0.01, 0.01, None, PASS, "0.01 <= max 0.01"),  # bounds are inclusive
        (0.0100004, 0.01, None, FAIL, "0.0100004 > max 0.01"),  # never "0.01 > max 0.01"
        (0.99, None, 0.995, FAIL, "0.99 < min 0.995"),
        (0.999, None, 0.995, PASS, "0.999 >= min 0.995"),
        (0.5, 1.0, 0.1, PASS, "0.5 within min 0.1 .. max 1"),
        (math.inf, 2.0, None, FAIL, "inf > max 2"),
        (math.inf, None, 1.0, PASS, "inf >= min 1"),
        (-math.inf, None, 0.0, FAIL, "-inf < min 0"),
    ],
)
def test_threshold_verdicts(
    value: float, high: float | None, low: float | None, verdict: Verdict, detail: str
) -> None:
    assert judge_threshold(value, high=high, low=low) == (verdict, detail)


@pytest.mark.parametrize(
    ("new", "old", "max_ratio", "min_ratio", "margin", "verdict", "detail"),
    [
        (0.3, 0.1, 1.5, None, 0.005, FAIL, "new 0.3 > old 0.1 * 1.5 + 0.005"),
        (0.15, 0.1, 1.5, None, 0.005, PASS, "new 0.15 <= old 0.1 * 1.5 + 0.005"),
        (0.154, 0.1, 1.5, None, 0.005, PASS, "new 0.154 <= old 0.1 * 1.5 + 0.005"),
        (0.004, 0.0, 1.5, None, 0.005, PASS, "new 0.004 <= old 0 * 1.5 + 0.005"),  # margin
        (0.004, 0.0, 1.5, None, 0.0, FAIL, "new 0.004 > old 0 * 1.5"),
        (0.97, 0.999, None, 0.99, 0.0, FAIL, "new 0.97 < old 0.999 * 0.99"),
        (0.995, 0.999, None, 0.99, 0.001, PASS, "new 0.995 >= old 0.999 * 0.99 - 0.001"),
        (1.0, 1.0, 1.2, 0.8, 0.0, PASS, "new 1 <= old 1 * 1.2 and >= old 1 * 0.8"),
        (0.5, 1.0, 1.2, 0.8, 0.0, FAIL, "new 0.5 < old 1 * 0.8"),
        (math.inf, 0.1, 1.5, None, 0.0, FAIL, "new inf > old 0.1 * 1.5"),
    ],
)
def test_compare_verdicts(
    new: float,
    old: float,
    max_ratio: float | None,
    min_ratio: float | None,
    margin: float,
    verdict: Verdict,
    detail: str,
) -> None:
    got = judge_compare(new, old, max_ratio=max_ratio, min_ratio=min_ratio, margin=margin)
    assert got == (verdict, detail)


def test_fmt() -> None:
    assert fmt(0.031234567) == "0.03123"
    assert fmt(math.inf) == "inf"
    assert fmt(0.0100004, unlike=0.01) == "0.0100004"
    assert fmt(0.01, unlike=0.01) == "0.01"


# --- measure() over a stub client ---------------------------------------------------------------


class StubClient:
    """Answers per query text: an Answer, or a QueryFailed to raise; records the queries."""

    def __init__(self, answers: dict[str, Answer | QueryFailed]) -> None:
        self.answers = answers
        self.asked: list[tuple[str, str]] = []

    async def query(self, url: str, promql: str) -> Answer:
        self.asked.append((url, promql))
        got = self.answers[promql]
        if isinstance(got, QueryFailed):
            raise got
        return got

    async def aclose(self) -> None:
        pass


def prometheus_spec(**fields: Any) -> PrometheusCheckSpec:
    base = {"type": "prometheus", "name": "ratio", "url": "http://127.0.0.1:9090", "max": 0.01}
    return PrometheusCheckSpec.model_validate({**base, "query": "q", **fields})


def compare_spec(**fields: Any) -> CompareCheckSpec:
    base = {"type": "compare", "name": "p99", "url": "http://127.0.0.1:9090", "max_ratio": 1.5}
    return CompareCheckSpec.model_validate({**base, "query": 'q{color="{{color}}"}', **fields})


def with_stub(check: Any, answers: dict[str, Answer | QueryFailed]) -> StubClient:
    stub = StubClient(answers)
    check._client = stub
    return stub


def prometheus_check(answers: dict[str, Answer | QueryFailed], **fields: Any) -> PrometheusCheck:
    check = prometheus_spec(**fields).build(placeholders=PLACEHOLDERS, resources=resource_pool())
    with_stub(check, answers)
    return check


@pytest.mark.parametrize(
    ("got", "fields", "verdict", "value", "detail"),
    [
        (answer(0.005), {}, PASS, 0.005, "0.005 <= max 0.01"),
        (answer(0.2), {}, FAIL, 0.2, "0.2 > max 0.01"),
        (answer(), {}, INCONCLUSIVE, None, "no data (empty result)"),
        (answer(math.nan), {"on_no_data": "fail"}, FAIL, None, "no data (NaN)"),
        (answer(), {"on_no_data": "pass"}, PASS, None, "no data (empty result)"),
        (answer(0.001, 0.02), {}, ERROR, None, "the query gives 2 series"),
        (answer(0.001, 0.02), {"reduce": "max"}, FAIL, 0.02, "0.02 > max 0.01"),
        (QueryFailed("cannot reach x: connection refused"), {}, ERROR, None, "cannot reach x"),
    ],
)
async def test_prometheus_measure(
    got: Answer | QueryFailed,
    fields: dict[str, Any],
    verdict: Verdict,
    value: float | None,
    detail: str,
) -> None:
    m = await prometheus_check({"q": got}, **fields).measure(MeasureContext(share=5))
    assert (m.verdict, m.value) == (verdict, value)
    assert m.detail.startswith(detail) and m.at > 0 and m.baseline is None


@pytest.mark.parametrize(
    ("on_no_data", "share", "verdict", "detail"),
    [
        ("fail", 0, INCONCLUSIVE, "no data (empty result); none expected before stage 1"),
        ("fail", 1, FAIL, "no data (empty result)"),
        ("pass", 0, PASS, "no data (empty result)"),
        ("inconclusive", 0, INCONCLUSIVE, "no data (empty result)"),
    ],
)
async def test_no_data_at_preflight_does_not_fail(
    on_no_data: str, share: int, verdict: Verdict, detail: str
) -> None:
    """PRODUCT.md, Preflight: the new color's traffic has no data yet, which is fine there."""
    check = prometheus_check({"q": answer()}, on_no_data=on_no_data)
    m = await check.measure(MeasureContext(share=share))
    assert (m.verdict, m.detail) == (verdict, detail)


def test_prometheus_build_renders_every_string_field() -> None:
    spec = prometheus_spec(
        url="http://prom-{{service}}:9090", query='up{color="{{new}}",other="{{old}}"}'
    )
    check = spec.build(placeholders=PLACEHOLDERS, resources=resource_pool())
    assert check.spec.url == "http://prom-checkout:9090"
    assert check.spec.query == 'up{color="green",other="blue"}'
    assert spec.query == 'up{color="{{new}}",other="{{old}}"}'  # the config stays a template
    with pytest.raises(ValueError, match=r"unknown placeholder \{\{color\}\}"):
        prometheus_spec(query='up{color="{{color}}"}').build(
            placeholders=PLACEHOLDERS, resources=resource_pool()
        )


NEW_Q, OLD_Q = 'q{color="green"}', 'q{color="blue"}'


def compare_check(
    answers: dict[str, Answer | QueryFailed], **fields: Any
) -> tuple[CompareCheck, StubClient]:
    check = compare_spec(**fields).build(placeholders=PLACEHOLDERS, resources=resource_pool())
    return check, with_stub(check, answers)


@pytest.mark.parametrize(
    ("new", "old", "verdict", "value", "baseline", "detail"),
    [
        (answer(0.3), answer(0.1), FAIL, 0.3, 0.1, "new 0.3 > old 0.1 * 1.5"),
        (answer(0.1), answer(0.1), PASS, 0.1, 0.1, "new 0.1 <= old 0.1 * 1.5"),
        (answer(), answer(0.1), INCONCLUSIVE, None, 0.1, "no data for new (green): empty result"),
        (answer(0.1), answer(math.nan), INCONCLUSIVE, None, None, "no data for old (blue): NaN"),
        (
            answer(),
            answer(),
            INCONCLUSIVE,
            None,
            None,
            "no data for new (green): empty result, old (blue): empty result",
        ),
        (
            QueryFailed("cannot reach p: connection refused"),
            QueryFailed("cannot reach p: connection refused"),
            ERROR,
            None,
            None,
            "new (green) and old (blue): cannot reach p: connection refused",
        ),
        (
            answer(0.1),
            QueryFailed("Prometheus: HTTP 503 timeout: query timed out"),
            ERROR,
            None,
            None,
            "old (blue): Prometheus: HTTP 503 timeout",
        ),
        (answer(0.1, 0.2), answer(0.1), ERROR, None, 0.1, "new (green): the query gives 2 series"),
    ],
)
async def test_compare_measure(
    new: Answer | QueryFailed,
    old: Answer | QueryFailed,
    verdict: Verdict,
    value: float | None,
    baseline: float | None,
    detail: str,
) -> None:
    check, stub = compare_check({NEW_Q: new, OLD_Q: old})
    m = await check.measure(MeasureContext(share=50, baseline=0.7))
    assert (m.verdict, m.value, m.baseline) == (verdict, value, baseline)
    assert m.detail.startswith(detail), m.detail
    assert sorted(q for _, q in stub.asked) == [OLD_Q, NEW_Q]


async def test_compare_at_share_100_judges_against_the_carried_baseline() -> None:
    check, stub = compare_check({NEW_Q: answer(0.3)}, margin=0.005)
    m = await check.measure(MeasureContext(share=100, baseline=0.1))
    assert (m.verdict, m.value, m.baseline) == (FAIL, 0.3, 0.1)
    assert m.detail == "new 0.3 > old 0.1 * 1.5 + 0.005 (old from the preceding stage)"
    assert stub.asked == [("http://127.0.0.1:9090", NEW_Q)]  # old has no traffic: not asked

    m = await check.measure(MeasureContext(share=100, baseline=0.25))
    assert (m.verdict, m.baseline) == (PASS, 0.25)


async def test_compare_at_share_100_without_baseline_is_no_data() -> None:
    check, _ = compare_check({NEW_Q: answer(0.3)}, on_no_data="fail")
    m = await check.measure(MeasureContext(share=100))
    assert (m.verdict, m.value, m.baseline) == (FAIL, None, None)
    assert m.detail == "no data for old (blue): no value recorded at a preceding stage"


async def test_compare_at_share_100_keeps_the_baseline_through_errors() -> None:
    check, _ = compare_check({NEW_Q: QueryFailed("cannot reach p: connection refused")})
    m = await check.measure(MeasureContext(share=100, baseline=0.1))
    assert (m.verdict, m.baseline) == (ERROR, 0.1)  # so the next measurement still has it


async def test_compare_at_preflight_only_new_may_lack_data() -> None:
    check, _ = compare_check({NEW_Q: answer(), OLD_Q: answer(0.1)}, on_no_data="fail")
    m = await check.measure(MeasureContext(share=0))
    assert (m.verdict, m.baseline) == (INCONCLUSIVE, 0.1)
    assert m.detail == "no data for new (green): empty result; none expected before stage 1"

    check, _ = compare_check({NEW_Q: answer(), OLD_Q: answer()}, on_no_data="fail")
    m = await check.measure(MeasureContext(share=0))
    assert m.verdict is FAIL  # the live color without data: the query is wrong


async def test_compare_takes_an_integer_baseline() -> None:
    check, _ = compare_check({NEW_Q: answer(0.3)})
    m = await check.measure(MeasureContext(share=100, baseline=1))
    assert (m.verdict, m.baseline) == (PASS, 1.0) and isinstance(m.baseline, float)


def test_compare_build_renders_each_color() -> None:
    check = compare_spec(
        url="http://prom-{{color}}:9090", query='q{color="{{color}}",svc="{{service}}"}'
    ).build(
        placeholders={"new": "blue", "old": "green", "service": "search"}, resources=resource_pool()
    )
    assert (check.new.color, check.new.url) == ("blue", "http://prom-blue:9090")
    assert check.new.query == 'q{color="blue",svc="search"}'
    assert (check.old.color, check.old.url) == ("green", "http://prom-green:9090")
    assert check.old.query == 'q{color="green",svc="search"}'


# --- config: parse_config names every error by its place --------------------------------------

SERVICE_YAML = """
services:
  checkout:
    routers:
      - {name: edge, type: haproxy, runtime_api: "tcp:127.0.0.1:9999", backend: checkout,
         blue: [blue1], green: [green1]}
    stages:
      - {weight: 50, hold: 60s}
      - {weight: 100, hold: 60s}
    checks:
      - name: green-error-ratio
        type: prometheus
        url: http://127.0.0.1:9090
        query: |
          sum(rate(http_requests_total{color="{{new}}",code=~"5.."}[1m]))
          / sum(rate(http_requests_total{color="{{new}}"}[1m]))
        max: 0.01
        interval: 10s
        failure_limit: 2
        on_no_data: inconclusive
      - name: green-not-slower
        type: compare
        url: http://127.0.0.1:9090
        query: |
          histogram_quantile(0.99, sum by (le) (rate(
            http_request_duration_seconds_bucket{color="{{color}}"}[1m])))
        max_ratio: 1.5
        margin: 0.005
"""


def config_data() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(SERVICE_YAML)
    return data


def test_product_example_checks_parse_with_defaults() -> None:
    ratio, slower = parse_config(config_data()).service("checkout").checks
    assert isinstance(ratio, PrometheusCheckSpec) and isinstance(slower, CompareCheckSpec)
    assert (ratio.max, ratio.min, ratio.on_no_data, ratio.reduce) == (
        0.01,
        None,
        "inconclusive",
        None,
    )
    assert ratio.effective_timeout == 5.0  # min(interval, 5s)
    assert (slower.max_ratio, slower.min_ratio, slower.margin) == (1.5, None, 0.005)
    assert slower.on_no_data == "inconclusive"


def _check_errors(**changes: Any) -> list[str]:
    """Errors of the config with ``changes`` applied (key ``c<N>__<field>`` is checks[N].field;
    the value ``...`` deletes the field)."""
    data = config_data()
    for key, value in changes.items():
        index, field = key.split("__")
        check = data["services"]["checkout"]["checks"][int(index.lstrip("c"))]
        if value is ...:
            del check[field]
        else:
            check[field] = value
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return info.value.errors


PLACE = "services.checkout.checks"


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"c0__max": ...}, f"{PLACE}[0]: give max, min or both"),
        ({"c0__min": 0.5}, f"{PLACE}[0]: min 0.5 is greater than max 0.01: nothing passes"),
        ({"c0__max": math.nan}, f"{PLACE}[0].max: "),
        ({"c0__max": math.inf}, f"{PLACE}[0].max: "),
        ({"c0__on_no_data": "ignore"}, f"{PLACE}[0].on_no_data: must be one of 'fail', 'pass' or"),
        ({"c0__reduce": "avg"}, f"{PLACE}[0].reduce: must be one of 'max', 'min' or 'sum'"),
        ({"c0__url": "127.0.0.1:9090"}, f"{PLACE}[0].url: must be an http:// or https:// URL"),
        ({"c0__query": ...}, f"{PLACE}[0].query: required"),
        ({"c0__query": ""}, f"{PLACE}[0].query: must not be empty"),
        ({"c0__maxx": 1}, f"{PLACE}[0].maxx: unknown key (did you mean 'max'?)"),
        (
            {"c0__query": 'up{color="{{color}}"}'},
            f"{PLACE}[0].query: unknown placeholder {{{{color}}}}",
        ),
        ({"c0__url": "http://{{neww}}:9090"}, f"{PLACE}[0].url: unknown placeholder {{{{neww}}}}"),
        ({"c1__max_ratio": ...}, f"{PLACE}[1]: give max_ratio, min_ratio or both"),
        ({"c1__max_ratio": 0}, f"{PLACE}[1].max_ratio: must be > 0"),
        ({"c1__min_ratio": -1}, f"{PLACE}[1].min_ratio: must be >= 0"),
        ({"c1__min_ratio": 2}, f"{PLACE}[1]: min_ratio 2 is greater than max_ratio 1.5"),
        ({"c1__margin": -0.1}, f"{PLACE}[1].margin: must be >= 0"),
        ({"c1__query": 'up{color="{{new}}"}'}, f"{PLACE}[1]: query must use {{{{color}}}}"),
        (
            {"c1__query": 'up{color="{{colour}}",svc="{{ service }}"}'},
            f"{PLACE}[1]: query must use {{{{color}}}} (it uses {{{{colour}}}}, {{{{service}}}})",
        ),
        ({"c1__max": 1}, f"{PLACE}[1].max: unknown key"),
    ],
    ids=lambda v: next(iter(v)) if isinstance(v, dict) else None,
)
def test_bad_check_config_names_the_place(changes: dict[str, Any], expected: str) -> None:
    errors = _check_errors(**changes)
    assert any(e.startswith(expected) for e in errors), errors


def test_compare_may_put_color_in_the_url_only() -> None:
    data = config_data()
    data["services"]["checkout"]["checks"][1].update(
        url="http://prom-{{color}}:9090", query="histogram_quantile(0.99, sum by (le) (x))"
    )
    spec = parse_config(data).service("checkout").checks[1]
    assert isinstance(spec, CompareCheckSpec)
