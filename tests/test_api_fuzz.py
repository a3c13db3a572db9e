"""The telemetry REST API fuzzed from its own OpenAPI schema (schemathesis): requests generated
from /api/openapi.json as the running server publishes it go over real HTTP to the production
server (uvicorn), on a ledger of a few hundred rows made by real proxy traffic. Every answer
must be a documented status with a body that matches its schema: never a 500.

Hypothesis drives schemathesis's strategies directly, one `@given` per operation and mode,
derandomized: a run sends the same requests every time. (schemathesis's pytest plugin is not
used.) The values that broke the API before are sent explicitly in every parameter too."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from django.core.management import call_command
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import checks as st
from schemathesis.generation import GenerationMode

from telemetry import listing
from telemetry.models import Capture, Cost, Event, Usage
from tests.conftest import TRAFFIC, send
from tests.test_command_debug import chat

EXAMPLES = 40
MODES = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
OPERATIONS = ["GET /v1/telemetry/summary", "GET /v1/telemetry/sessions",
              "GET /v1/telemetry/export", "GET /v1/telemetry/traces/{trace_id}"]

SETTINGS = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                           HealthCheck.data_too_large],
)

# Values sent in every parameter, one parameter at a time: empty, NUL bytes (PostgreSQL refuses
# them in text), long and non-ASCII text, numbers past a decimal's or a float's range, nan and
# inf, and the calendar's first and last days.
EDGES = ["", "\x00", "x" * 4000, "日本語 🙂 \u202e", "9" * 400, "1e999999999", "nan", "-inf",
         "9999-12-31", "0001-01-01"]
# And more where a parameter parses its text.
EDGES_BY_NAME = {
    "since": ["9999-12-31T23:59:59.999999-14:00", "0001-01-01T00:00:00+14:00", "10000-01-01",
              "2026-02-30", "2026-01-01T24:00", "2026-01-01\x00"],
    "until": ["9999-12-30", "9999-12-31T23:59:59", "0001-01-01T00:00:00+14:00", "2026-02-30"],
    "min_cost": ["-1", "$1e400", "1e-999999999", "0.0000000001", "sNaN", "Infinity", "-0",
                 "9223372036.854775807", "9223372036.854775808"],
    "cursor": ["nan_0", "inf_0", "-inf_x", "1e999_x", "1e308_ff", f"{'9' * 400}_x", "0_", "_",
               "1.5_\x00", "1.5_" + "f" * 4000],
    "limit": ["0", "-1", "1001", "1e3", "1.0"],
    "compressed_only": ["yes", "2", "TRUE"],
    "model": ["a\x00b"],
    "trace_id": ["a\x00b", "a/b", "%00", "..", " "],
}
COMBINATIONS = [
    {"since": "0001-01-01", "until": "9999-12-30"},
    {"since": "9999-12-30", "until": "9999-12-30"},
    {"since": "0001-01-01T00:00:00+14:00", "until": "0001-01-02"},
    {"since": "2000-01-01", "min_cost": "0", "compressed_only": "true", "status": "ok"},
]

AGENTS = ["coder", "reviewer", "", "ops", "night batch"]


def once_per_operation(check: Callable[..., Any]) -> Callable[..., Any]:
    """A check that sends requests of its own, run on one successful answer per operation."""
    done: set[str] = set()

    def checked(ctx: Any, response: Any, case: Any) -> Any:
        if case.operation.label in done:
            return None
        result = check(ctx, response, case)
        if 200 <= response.status_code < 300:
            done.add(case.operation.label)
        return result

    checked.__name__ = check.__name__
    return checked


def checks() -> list[Callable[..., Any]]:
    """Every schemathesis check that can judge an answer of a read-only API. ignored_auth sends
    the request again without the token and with a wrong one; both must be refused. Left out:
    positive_data_acceptance (a schema-valid request may still be refused: `since` is any
    string, only a date parses, and `period` with `since` is refused) and the stateful checks
    (use_after_free, ensure_resource_availability, object_level_authorization: nothing here
    creates or deletes anything)."""
    return [
        st.not_a_server_error,
        st.status_code_conformance,
        st.content_type_conformance,
        st.response_headers_conformance,
        st.response_schema_conformance,
        st.negative_data_rejection,
        st.missing_required_header,
        st.unsupported_method,
        once_per_operation(st.ignored_auth),
    ]


@pytest.fixture
def ledger(server, rows) -> list:
    """330 rows: 66 made by real proxy traffic today (both providers, streams, agents,
    sessions, provider errors, a compressed chat that `debug on` captured), and four copies of
    each, with their usage and cost, spread over the last 400 days (copied, not sent: 264 more
    requests would cost the fuzzing's time)."""
    call_command("debug", "on", "--requests", "1", stdout=io.StringIO())
    chat(server, **{"x-tokenpak-session": "s-1"})
    jobs: list[tuple[Any, ...]] = []
    for i in range(10):
        for provider, model, agent, stream, usage in TRAFFIC:
            jobs.append((provider, model, AGENTS[i % len(AGENTS)] or agent, stream, usage,
                         "", f"s-{i % 3}" if i % 2 else ""))
    jobs += [("openai", "gpt-4o", "coder", False, None, "status=429", "s-1")] * 5

    def sender(part: list[tuple[Any, ...]]) -> list[int]:
        with httpx.Client() as client:
            return [send(server.url, *job[:6], session=job[6], client=client) for job in part]

    with ThreadPoolExecutor(4) as pool:
        codes = [c for part in pool.map(sender, [jobs[i::4] for i in range(4)]) for c in part]
    assert sorted(set(codes)) == [200, 429]
    events = rows(1 + len(jobs))
    assert events[0].tokens_saved > 0 and Capture.objects.filter(pk=events[0].pk).exists()
    copies: dict[type, list] = {Event: [], Usage: [], Cost: []}
    for k in range(1, 5):
        for i, e in enumerate(events):
            ts = e.ts - ((i * 37 + k * 97) % 400) * 86400.0 - i
            trace_id = f"{int(ts * 1000):012x}{k:04x}{i:016x}"  # sorts by time, as the ledger's
            copies[Event].append(copy(e, trace_id=trace_id, ts=ts,
                                      created_at=datetime.fromtimestamp(ts, tz=UTC)))
            copies[Usage].append(copy(e.usage, trace_id=trace_id))
            copies[Cost].append(copy(e.cost, trace_id=trace_id))
    for model, made in copies.items():
        model.objects.bulk_create(made)
    return events


def copy(row: Any, **changes: Any) -> Any:
    model = type(row)
    fields = {f.attname: getattr(row, f.attname) for f in model._meta.concrete_fields}
    return model(**{**fields, **changes})


@pytest.fixture
def operations(server) -> list:
    """The API's operations, from the schema the running server publishes."""
    raw = httpx.get(server.url + "/api/openapi.json").json()
    found = [result.ok() for result in schemathesis.openapi.from_dict(raw).get_all_operations()]
    assert [op.label for op in found] == OPERATIONS
    return found


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


def fuzz(operations: list, run: Callable[[Any], None], headers: dict | None = None
         ) -> tuple[int, list[str]]:
    """run() on EXAMPLES generated cases of each operation in each mode. Fixed headers are sent
    as given, never generated or mutated. Returns how many cases ran and the failures, every
    operation's, not only the first one's."""
    failures: list[str] = []
    unsatisfiable: list[str] = []
    ran = 0
    for op in operations:
        for mode in MODES:

            @SETTINGS
            @given(op.as_strategy(generation_mode=mode, headers=dict(headers or {})))
            def each(case: Any) -> None:
                nonlocal ran
                ran += 1
                run(case)

            try:
                each()
            except Unsatisfiable:
                unsatisfiable.append(f"{op.label} ({mode.value})")
            except (Exception, BaseExceptionGroup) as exc:  # reported together below
                failures.append(f"== {op.label} ({mode.value}):\n{exc}")
    # A trace id is any string, and a path or a query string carries only strings: with the
    # token fixed, nothing in GET /traces/{trace_id} can be made invalid on the wire.
    assert unsatisfiable == ([f"{OPERATIONS[3]} (negative)"] if headers else [])
    return ran, failures


def edge_cases(op: Any, ledger: list) -> list[Any]:
    """EDGES in each query and path parameter of op, the rest of EDGES_BY_NAME where it applies,
    COMBINATIONS, and real values a generator cannot guess: trace ids and a cursor from the
    ledger (so that a trace found, with its capture and segments, meets the schema too)."""
    oldest = Event.objects.order_by("ts").first()  # a copy
    real = {"trace_id": [e.trace_id for e in ledger[:8]] + [oldest.trace_id],
            "cursor": [listing.cursor_of(ledger[-1])]}
    # Not the token's header and the session cookie, which are parameters here too.
    names = [p.name for p in op.iter_parameters() if p.location.value in ("query", "path")]
    cases = []
    for name in names:
        for value in EDGES + EDGES_BY_NAME.get(name, []) + real.get(name, []):
            if name == "trace_id":
                cases.append(op.Case(path_parameters={"trace_id": value}))
            else:
                cases.append(op.Case(query={name: value}))
    if "since" in names:
        cases += [op.Case(query=query) for query in COMBINATIONS]
    return cases


def test_it_answers_fuzzed_requests_with_the_token_without_a_server_error(
        ledger, server, token, operations, http):
    bearer = {"Authorization": f"Bearer {token}"}
    checked = checks()
    logged = len(server.output())

    def run(case: Any) -> None:
        response = case.call_and_validate(
            base_url=server.url, session=http, headers=dict(bearer), checks=checked)
        if response.status_code == 400:
            detail = response.json()["detail"]
            assert detail and "\n" not in detail, detail

    ran, failures = fuzz(operations, run, headers=bearer)
    edges = [case for op in operations for case in edge_cases(op, ledger)]
    assert len(edges) == 446  # 421, and summary's limit and offset
    for case in edges:
        try:
            run(case)
        except (Exception, BaseExceptionGroup) as exc:  # reported together below
            failures.append(f"== {case.operation.label} {case!r}:\n{exc}")
    assert not failures, f"{len(failures)} failed:\n\n" + "\n\n".join(failures)
    assert "Traceback" not in server.output()[logged:]
    assert ran == (len(MODES) * len(OPERATIONS) - 1) * EXAMPLES  # 280: all but traces' negative


def test_it_answers_every_fuzzed_request_without_the_token_with_401(server, operations, http):
    checked = [c for c in checks() if c.__name__ != "ignored_auth"]

    def run(case: Any) -> None:
        response = case.call(base_url=server.url, session=http)
        case.validate_response(response, checks=checked)
        assert response.status_code == 401, (case, response.status_code, response.text)
        assert response.json() == {"detail": "Unauthorized"}

    ran, failures = fuzz(operations, run)
    assert not failures, "\n\n".join(failures)
    assert ran == len(MODES) * len(OPERATIONS) * EXAMPLES  # 320
