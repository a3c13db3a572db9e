"""Budgets through the front door: the official SDKs, the live server, the fake provider."""

from __future__ import annotations

import asyncio
import json
import time
from decimal import Decimal

import anthropic
import httpx
import openai
import pytest

from budgets import admission, standings
from budgets.models import Budget, CheapRoute, Hold, Spend
from telemetry import reports
from telemetry.models import NANO, Event
from tests.conftest import wait_for
from tests.fakeprovider import DEFAULT_TEXT

OPENAI_KEY = "sk-proj-BUDGETKEY0123456789"
ANTHROPIC_KEY = "sk-ant-BUDGETKEY0123456789"
ASK = [{"role": "user", "content": "Say hello"}]


def oai(server, **kwargs) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=OPENAI_KEY,
                         **{"max_retries": 0, **kwargs})


def claude(server, **kwargs) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key=ANTHROPIC_KEY,
                               **{"max_retries": 0, **kwargs})


def usage(**counts: int) -> dict[str, str]:
    return {"x-fake-usage": json.dumps(counts)}


def spend(server, output_tokens: int, agent: str = "") -> None:
    """Spend through the proxy: claude-sonnet-4-6 output is $15 per million tokens."""
    headers = usage(input_tokens=0, output_tokens=output_tokens)
    if agent:
        headers["x-tokenpak-agent"] = agent
    claude(server).messages.create(model="claude-sonnet-4-6", max_tokens=100, messages=ASK,
                                   extra_headers=headers)


def budget(limit: str, action: str = "warn", period: str = "monthly", agent: str = "",
           alert: int = 80) -> Budget:
    return Budget.objects.create(agent=agent, period=period, limit_usd=Decimal(limit),
                                 on_exceeded=action, alert_at_pct=alert)


def test_it_forwards_past_a_warn_budget_and_marks_the_response(start_server, fake, rows):
    budget("0.01", "warn")
    server = start_server()
    first = claude(server).messages.with_raw_response.create(
        model="claude-sonnet-4-6", max_tokens=100, messages=ASK,
        extra_headers=usage(input_tokens=0, output_tokens=1000))  # $0.015
    assert "x-tokenpak-budget" not in first.headers
    rows(1)
    second = claude(server).messages.with_raw_response.create(
        model="claude-sonnet-4-6", max_tokens=100, messages=ASK)
    assert second.headers["x-tokenpak-budget"] == "exceeded"
    assert second.parse().content[0].text == DEFAULT_TEXT
    assert len(fake.log) == 2
    events = rows(2)
    assert [e.status for e in events] == ["ok", "ok"]
    wait_for(lambda: "over budget: monthly budget $0.010, $0.015 spent, on exceeded warn; "
             "forwarded" in (server.home / "tokenpak.log").read_text())


def test_it_blocks_with_the_providers_429_and_sends_nothing_upstream(start_server, fake, rows):
    budget("0.02", "block")
    server = start_server()
    spend(server, 2000)  # $0.03
    rows(1)
    with pytest.raises(openai.RateLimitError) as caught:
        # The SDK's own retries stay off: the block says x-should-retry: false.
        oai(server, max_retries=2).chat.completions.create(model="gpt-4o-mini", messages=ASK)
    response = caught.value.response
    error = response.json()["error"]
    assert error["type"] == "insufficient_quota"
    reset = reports.period("month")[1]
    assert error["message"] == (
        "TokenPak budget exceeded: the monthly budget of $0.020 has $0.030 spent; it resets "
        f"{reset:%Y-%m-%d %H:%M} (UTC). Raise it with `tokenpak budget set --monthly USD` or "
        "wait for the reset.")
    assert response.headers["x-tokenpak-budget"] == "exceeded"
    assert response.headers["x-should-retry"] == "false"
    assert 0 < int(response.headers["retry-after"]) <= 31 * 86400
    with pytest.raises(anthropic.RateLimitError) as caught:
        claude(server, max_retries=2).messages.create(
            model="claude-haiku-4-5", max_tokens=10, messages=ASK, stream=True)
    assert caught.value.response.json()["error"]["type"] == "rate_limit_error"
    assert "monthly budget of $0.020" in caught.value.response.json()["error"]["message"]

    assert len(fake.log) == 1  # only the request that spent
    events = rows(3)
    assert [e.status for e in events] == ["ok", "blocked", "blocked"]
    blocked = events[1:]
    assert {e.error_class for e in blocked} == {"budget_exceeded"}
    assert [e.requested_model for e in blocked] == ["gpt-4o-mini", "claude-haiku-4-5"]
    assert all(e.cost_nano_usd == 0 and e.upstream_status is None for e in blocked)


def test_it_records_a_client_that_leaves_while_its_budget_is_decided(start_server, fake, rows):
    from django.db import transaction

    held = budget("100", "block")
    server = start_server()
    with transaction.atomic():
        # The budget's row stays locked: the server's exact check waits on it, and the client
        # gives up first.
        Budget.objects.select_for_update().filter(pk=held.pk).update(alert_at_pct=80)
        with pytest.raises(anthropic.APITimeoutError):
            claude(server, timeout=1).messages.create(
                model="claude-sonnet-4-6", max_tokens=10, messages=ASK)
        time.sleep(0.5)
        assert not Event.objects.exists()  # the row waits for the check, which waits on us
    [event] = rows(1)
    assert (event.status, event.upstream_status) == ("client_closed", None)
    assert fake.log == []
    # The check took its holds after the client left; the row's writer dropped them.
    wait_for(lambda: not Hold.objects.exclude(trace_id__startswith="lease:").exists())


def test_it_routes_to_the_cheaper_model_and_keeps_both_names(start_server, fake, rows):
    budget("0", "route-cheap")
    server = start_server()
    raw = claude(server).messages.with_raw_response.create(
        model="claude-opus-4-5-20251101", max_tokens=50, messages=ASK,
        extra_headers=usage(input_tokens=1000, output_tokens=100))
    assert fake.log[0].json["model"] == "claude-haiku-4-5"
    reply = raw.parse()
    assert reply.model == "claude-haiku-4-5"  # as the provider reports it
    assert raw.headers["x-tokenpak-budget"] == "exceeded"
    assert raw.headers["x-tokenpak-routed-from"] == "claude-opus-4-5-20251101"
    [event] = rows(1)
    assert (event.requested_model, event.sent_model, event.model) == (
        "claude-opus-4-5-20251101", "claude-haiku-4-5", "claude-haiku-4-5")
    # Priced as what answered: 1000 × $1 + 100 × $5 per million.
    assert event.cost.cost_usd == Decimal("0.0015")


def test_it_routes_streams_and_follows_the_users_mapping(start_server, fake, rows):
    budget("0", "route-cheap")
    CheapRoute.objects.create(provider="openai", model="gpt-4.1", cheaper="gpt-4.1-nano")
    server = start_server()
    chunks = list(oai(server).chat.completions.create(model="gpt-4o", messages=ASK,
                                                      stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == DEFAULT_TEXT
    assert {c.model for c in chunks} == {"gpt-4o-mini"}
    oai(server).chat.completions.create(model="gpt-4.1-2025-04-14", messages=ASK)
    # Nothing cheaper than gpt-4o-mini: it goes as it is, still marked exceeded.
    raw = oai(server).chat.completions.with_raw_response.create(model="gpt-4o-mini",
                                                                messages=ASK)
    assert raw.headers["x-tokenpak-budget"] == "exceeded"
    assert "x-tokenpak-routed-from" not in raw.headers
    assert [r.json["model"] for r in fake.log] == ["gpt-4o-mini", "gpt-4.1-nano", "gpt-4o-mini"]
    events = rows(3)
    assert [(e.requested_model, e.sent_model) for e in events] == [
        ("gpt-4o", "gpt-4o-mini"), ("gpt-4.1-2025-04-14", "gpt-4.1-nano"),
        ("gpt-4o-mini", "gpt-4o-mini")]
    assert events[0].stream and events[0].output_tokens == 7


def test_it_applies_agent_budgets_to_their_agent_and_the_strictest_action(
        start_server, fake, rows):
    budget("0", "warn")  # global
    budget("0", "block", period="daily", agent="coder")
    server = start_server()
    with pytest.raises(openai.RateLimitError) as caught:
        oai(server).chat.completions.create(model="gpt-4o-mini", messages=ASK,
                                            extra_headers={"X-TokenPak-Agent": "coder"})
    assert "daily (agent coder) budget of $0.00" in caught.value.response.json()["error"][
        "message"]
    assert "`tokenpak budget set --daily USD --agent coder`" in caught.value.message
    for agent in ("reviewer", ""):
        raw = oai(server).chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=ASK, extra_headers={"X-TokenPak-Agent": agent})
        assert raw.headers["x-tokenpak-budget"] == "exceeded"
    assert len(fake.log) == 2
    assert [(e.agent_id, e.status) for e in rows(3)] == [
        ("coder", "blocked"), ("reviewer", "ok"), ("", "ok")]


def test_it_leaves_traffic_alone_when_no_budget_applies(start_server, fake, rows):
    budget("0", "block", agent="coder")
    server = start_server()
    raw = oai(server).chat.completions.with_raw_response.create(model="gpt-4o-mini",
                                                                messages=ASK)
    assert "x-tokenpak-budget" not in raw.headers
    [event] = rows(1)
    assert event.status == "ok" and Hold.objects.count() == 0


def test_it_alerts_once_per_budget_and_period_and_posts_the_webhook(start_server, fake, rows):
    budget("1.00", "warn", alert=50)
    server = start_server(TOKENPAK_BUDGET_WEBHOOK_URL=fake.url + "/hooks/budget")
    spend(server, 40_000)  # $0.60: past the 50 % alert
    rows(1)
    raw = claude(server).messages.with_raw_response.create(
        model="claude-sonnet-4-6", max_tokens=10, messages=ASK)
    assert raw.headers["x-tokenpak-budget"] == "alert"
    spend(server, 1000)  # still under the limit: no second alert
    rows(3)
    spend(server, 30_000)  # $1.05 in all: exceeded
    rows(4)

    def hooks() -> list:
        return [r for r in fake.log if r.path == "/hooks/budget"]

    wait_for(lambda: len(hooks()) == 2)
    spend(server, 10)
    rows(5)
    time.sleep(0.5)
    alert, exceeded = (r.json for r in hooks())
    assert len(hooks()) == 2
    assert alert["type"] == "budget.alert" and exceeded["type"] == "budget.exceeded"
    assert alert["budget"] == {"agent": None, "period": "monthly", "limit_usd": "1.000000000",
                               "alert_at_pct": 50, "on_exceeded": "warn"}
    assert Decimal(alert["spent_usd"]) == Decimal("0.6")
    assert alert["message"] == ("Monthly budget at 60.0%: $0.600 of $1.00 spent "
                                "(alert at 50%)")
    assert exceeded["message"].startswith("Monthly budget exceeded: $1.07 of $1.00 spent; "
                                          "from now on: warn until ")
    assert "authorization" not in {h.lower() for h in hooks()[0].headers}
    log = (server.home / "tokenpak.log").read_text()
    assert log.count("Monthly budget at 60.0%") == 1
    assert log.count("Monthly budget exceeded") == 1


def test_it_says_exceeded_once_when_one_request_jumps_past_both_thresholds(
        start_server, fake, rows):
    budget("0.01", "block")
    server = start_server(TOKENPAK_BUDGET_WEBHOOK_URL=fake.url + "/hooks/budget")
    spend(server, 10_000)  # $0.15: past 80 % and past the limit in one step
    rows(1)
    wait_for(lambda: any(r.path == "/hooks/budget" for r in fake.log))
    time.sleep(0.3)
    assert [r.json["type"] for r in fake.log if r.path == "/hooks/budget"] == ["budget.exceeded"]
    log = (server.home / "tokenpak.log").read_text()
    assert "Monthly budget exceeded: $0.150 of $0.010 spent" in log
    assert "budget at" not in log


def test_it_counts_spend_exactly_as_the_ledger_does(start_server, fake, rows):
    budget("100", "warn")
    budget("100", "warn", period="daily", agent="coder")
    server = start_server()
    spend(server, 1000, agent="coder")
    spend(server, 3333)
    list(oai(server).chat.completions.create(
        model="gpt-4o", messages=ASK, stream=True,
        extra_headers=usage(prompt_tokens=1234, completion_tokens=77)))
    events = rows(3)
    total = sum(e.cost_nano_usd for e in events)
    start = reports.period("month")[0].timestamp()
    assert Spend.objects.get(agent="", period="monthly", period_start=start).spent_nano == total
    coder = Spend.objects.get(agent="coder", period="daily",
                              period_start=reports.period("today")[0].timestamp())
    assert coder.spent_nano == events[0].cost_nano_usd
    # Far from the limits the server keeps leases; no request's own hold outlives its row.
    wait_for(lambda: not Hold.objects.exclude(trace_id__startswith=standings.LEASE_PREFIX).exists())
    server.stop()  # a clean stop gives the leases back
    assert Hold.objects.count() == 0


# --- concurrency: several worker processes share one database -------------------------------

LIMIT = Decimal("1.00")
MAX_TOKENS = 1000
BURST = 50


def test_it_never_lets_50_concurrent_requests_overshoot_a_nearly_spent_budget(
        start_server, fake, rows, tmp_path):
    budget(str(LIMIT), "block")
    workers = [start_server(home=tmp_path / f"worker{i}") for i in range(3)]
    spend(workers[0], 63_330)  # $0.95: $0.05 left
    [seed] = rows(1)
    body = json.dumps({"model": "claude-sonnet-4-6", "max_tokens": MAX_TOKENS,
                       "messages": ASK}).encode()
    held = standings.reservation("claude-sonnet-4-6", "anthropic", len(body), MAX_TOKENS)
    headers = {"x-api-key": ANTHROPIC_KEY, "anthropic-version": "2023-06-01",
               "content-type": "application/json",
               # Every request stays in flight a while, so all 50 overlap.
               "x-fake-scenario": "delay=0.3",
               **usage(input_tokens=0, output_tokens=500)}  # $0.0075 each

    async def burst() -> list[int]:
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(*(
                client.post(workers[i % 3].url + "/v1/messages", content=body, headers=headers)
                for i in range(BURST)))

    statuses = [r.status_code for r in asyncio.run(burst())]
    events = rows(BURST + 1, timeout=60)
    admitted = [e for e in events[1:] if e.status == "ok"]
    blocked = [e for e in events[1:] if e.status == "blocked"]
    assert len(admitted) + len(blocked) == BURST
    assert sorted(statuses) == sorted([200] * len(admitted) + [429] * len(blocked))
    # $0.05 left and ~$0.015 held per request: three or four get through, never all.
    assert 2 <= len(admitted) <= 10 and blocked
    assert len([r for r in fake.log if r.path == "/v1/messages"]) == 1 + len(admitted)
    spent = sum(e.cost_nano_usd for e in events)
    assert spent <= int(LIMIT * NANO) + held  # at most one request's hold past the limit
    start = reports.period("month")[0].timestamp()
    assert Spend.objects.get(agent="", period="monthly", period_start=start).spent_nano == spent
    wait_for(lambda: Hold.objects.count() == 0)
    assert seed.cost_nano_usd == 949_950_000


# --- periods ----------------------------------------------------------------------------------


def _ledger_row(ts: float, cost: str, agent: str = "") -> None:
    """A row as the ledger writer leaves it: for spend in a period the proxy never saw."""
    from telemetry.record import new_trace_id

    Event.objects.create(trace_id=new_trace_id(ts), event_type="messages", ts=ts,
                         provider="anthropic", model="claude-sonnet-4-6", agent_id=agent,
                         status="ok", cost_nano_usd=int(Decimal(cost) * NANO))


def test_it_starts_each_period_from_that_periods_spend(start_server, fake, rows):
    budget("1.00", "block", period="daily")
    today = reports.period("today")[0].timestamp()
    _ledger_row(today - 3600, "5.00")  # yesterday's spend does not count today
    _ledger_row(today + 1, "0.50")
    server = start_server()
    reply = oai(server).chat.completions.create(model="gpt-4o-mini", messages=ASK)
    assert reply.choices[0].message.content == DEFAULT_TEXT
    wait_for(lambda: Event.objects.count() == 3)
    [standing] = standings.current()
    assert standing.start.timestamp() == today
    assert Decimal("0.50") < reports.usd(standing.spent_nano) < Decimal("0.51")


@pytest.mark.django_db(transaction=True)
def test_it_rolls_over_at_midnight_in_the_configured_zone(settings):
    settings.TIME_ZONE = "America/New_York"
    budget("1.00", "block", period="daily")
    start, end = reports.period("today")
    noon = start.timestamp() + 12 * 3600
    _ledger_row(noon, "1.20")
    last_second, next_day = end.timestamp() - 1, end.timestamp() + 1

    def decide(ts: float) -> admission.Verdict:
        return admission.admit("0" * 32, "", "anthropic", "claude-haiku-4-5", 500, 100, ts)

    assert decide(last_second).blocked
    after = decide(next_day)
    assert not after.action and after.held
    new = Spend.objects.get(period_start=end.timestamp())
    assert new.spent_nano == 0 and new.holds.count() == 1
    # New York's midnight, not UTC's.
    assert end.utcoffset().total_seconds() in (-5 * 3600, -4 * 3600)
