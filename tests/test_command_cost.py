"""`cost`, on rows made by real proxy traffic (tests/conftest.py TRAFFIC)."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from telemetry import reports
from telemetry.models import Event


def run(*args: str) -> str:
    out = io.StringIO()
    call_command("cost", *args, stdout=out)
    return out.getvalue()


def exact_total(events) -> Decimal:
    return sum((e.cost.cost_usd for e in events), Decimal("0"))


def age(trace_ids, days: float) -> None:
    """Move rows into the past (they were made by real traffic just now)."""
    for e in Event.objects.filter(trace_id__in=trace_ids):
        e.ts -= days * 86400
        e.created_at = datetime.fromtimestamp(e.ts, tz=UTC)
        e.save(update_fields=["ts", "created_at"])


def test_it_prints_todays_line_in_the_seed_layout(traffic):
    total = exact_total(traffic)
    tokens = sum(e.input_tokens + e.output_tokens for e in traffic)
    assert run() == (
        f"Today: {reports.money(total)} | 7 requests | {tokens:,} tokens | saved 0%\n"
    )
    assert run("--today") == run()


def test_it_agrees_with_the_rows_to_the_cent_in_json(traffic):
    data = json.loads(run("--month", "--json"))
    assert data["period"] == "This month"
    assert Decimal(data["totals"]["cost_usd"]) == exact_total(traffic)
    assert data["totals"]["requests"] == 7
    assert data["totals"]["input_tokens"] == sum(e.usage.input_tokens for e in traffic)


def test_it_breaks_costs_down_by_model_agent_and_day(traffic):
    by_model = json.loads(run("--week", "--by-model", "--json"))["rows"]
    costs = {r["key"]: Decimal(r["cost_usd"]) for r in by_model}
    assert costs["gpt-4o-mini"] == exact_total(e for e in traffic if e.model == "gpt-4o-mini")
    assert set(costs) == {e.model for e in traffic}
    # biggest spend first
    assert [Decimal(r["cost_usd"]) for r in by_model] == sorted(costs.values(), reverse=True)

    by_agent = {r["key"]: r["requests"] for r in json.loads(run("--by-agent", "--json"))["rows"]}
    assert by_agent == {"coder": 4, "reviewer": 2, "(none)": 1}

    by_day = json.loads(run("--by-day", "--json"))["rows"]
    assert [r["key"] for r in by_day] == [datetime.now(tz=reports.zone()).date().isoformat()]

    text = run("--by-model")
    # mystery-model-x at the default price: 1000 × $3 + 1000 × $15 = $0.018, the most
    assert text.splitlines()[1].split()[0] == "mystery-model-x"


def test_it_filters_by_model_agent_min_cost_and_dates(traffic):
    assert json.loads(run("--model", "gpt-4o", "--json"))["totals"]["requests"] == 2
    assert json.loads(run("--agent", "reviewer", "--json"))["totals"]["requests"] == 2
    expensive = [e for e in traffic if e.cost.cost_usd >= Decimal("0.005")]
    data = json.loads(run("--min-cost", "0.005", "--json"))
    assert data["totals"]["requests"] == len(expensive)
    assert Decimal(data["totals"]["cost_usd"]) == exact_total(expensive)

    old = [e.trace_id for e in traffic[:2]]
    age(old, days=40)
    since = (datetime.now(tz=reports.zone()) - timedelta(days=45)).date().isoformat()
    until = (datetime.now(tz=reports.zone()) - timedelta(days=35)).date().isoformat()
    window = json.loads(run("--since", since, "--until", until, "--json"))
    assert window["totals"]["requests"] == 2
    assert json.loads(run("--since", since, "--json"))["totals"]["requests"] == 7
    assert json.loads(run("--json"))["totals"]["requests"] == 5  # today only
    assert json.loads(run("--until", until, "--json"))["period"] == f"Until {until}"


def test_it_reports_unknown_models_and_agents_as_empty(traffic):
    assert run("--model", "no-such-model") == (
        "Today: $0.00 | 0 requests | 0 tokens | saved 0% (model no-such-model)\n"
    )
    assert json.loads(run("--agent", "nobody", "--json"))["totals"]["requests"] == 0


def test_it_exports_the_matching_requests_to_stdout(traffic):
    rows = list(csv.DictReader(io.StringIO(run("--model", "gpt-4o-mini", "--export", "csv"))))
    assert len(rows) == 2
    assert sum(Decimal(r["cost_usd"]) for r in rows) == exact_total(
        e for e in traffic if e.model == "gpt-4o-mini")
    items = json.loads(run("--export", "json"))
    assert {i["trace_id"] for i in items} == {e.trace_id for e in traffic}


@pytest.mark.parametrize(
    "args, message",
    [
        (["--since", "2026-13-01"], "bad date '2026-13-01'"),
        (["--until", "yesterday"], "bad date 'yesterday'"),
        (["--month", "--since", "2026-01-01"], "--month and --since/--until cannot be combined"),
        (["--since", "2026-02-01", "--until", "2026-01-01"], "--since must be before --until"),
        (["--min-cost", "cheap"], "bad --min-cost 'cheap'"),
        (["--min-cost", "-1"], "--min-cost must be a positive number"),
        # Found by the REST API's fuzzing (tests/test_api_fuzz.py): these raised, 500 there.
        (["--until", "9999-12-31"], "bad date '9999-12-31': out of range"),
        (["--min-cost", "1e999999999"], "--min-cost must be at most 9223372036.854775807 dollars"),
        (["--min-cost", "9223372036.854775808"], "--min-cost must be at most"),
        (["--model", "a\x00b"], "bad model 'a\\\\x00b': a NUL byte cannot be in a filter"),
    ],
)
def test_it_refuses_bad_input_with_one_line(db, args, message):
    with pytest.raises(CommandError, match=message.replace("(", r"\(").replace("+", r"\+")):
        run(*args)


def test_it_refuses_conflicting_flags(db):
    with pytest.raises(CommandError):
        run("--today", "--week")
    with pytest.raises(CommandError):
        run("--by-model", "--by-day")
