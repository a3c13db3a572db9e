"""Budget leases: far from a limit requests are admitted from memory, exactly as safely."""

from __future__ import annotations

import asyncio
import io
import json
import re
import signal
import time
from collections.abc import Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from django.core.management import call_command
from django.db import connections
from django.db.backends.utils import CursorWrapper
from django.db.models import F

from budgets import admission, standings
from budgets import leases as budget_leases
from budgets.models import Budget, Hold, Spend
from telemetry import reports
from telemetry.models import Event
from telemetry.record import Record, new_trace_id
from telemetry.usage import TokenUsage
from telemetry.writer import LedgerWriter
from tests.conftest import wait_for
from tests.test_budget_guard import ANTHROPIC_KEY, ASK, budget, spend, usage

MODEL = "claude-sonnet-4-6"
MAX_TOKENS = 1000
PAYLOAD = {"model": MODEL, "max_tokens": MAX_TOKENS, "messages": ASK}
BODY_SIZE = len(json.dumps(PAYLOAD))


def leases() -> list[Hold]:
    return list(Hold.objects.filter(trace_id__startswith=standings.LEASE_PREFIX))


# --- through the front door -----------------------------------------------------------------


def probe() -> int:
    """The next Hold id: ids only grow, so the gap between two probes counts the inserts."""
    spend_row = Spend.objects.first()
    hold = Hold.objects.create(spend=spend_row, trace_id="probe", amount_nano=0,
                               created=time.time())
    pk = hold.pk
    hold.delete()
    return pk


def test_it_admits_a_concurrent_burst_on_leases_across_three_processes_and_gives_them_back(
        start_server, fake, rows, tmp_path):
    budget("1000", "block")
    workers = [start_server(home=tmp_path / f"worker{i}") for i in range(3)]
    body = json.dumps(PAYLOAD).encode()
    r = standings.reservation(MODEL, "anthropic", len(body), MAX_TOKENS)
    headers = {"x-api-key": ANTHROPIC_KEY, "anthropic-version": "2023-06-01",
               "content-type": "application/json", **usage(input_tokens=10, output_tokens=300)}

    async def burst(n: int, **extra: str) -> list[int]:
        async with httpx.AsyncClient(timeout=60) as client:
            return [r.status_code for r in await asyncio.gather(*(
                client.post(workers[i % 3].url + "/v1/messages", content=body,
                            headers={**headers, **extra})
                for i in range(n)))]

    # Each process's first request is decided exactly; then its lessor leases for that size.
    assert asyncio.run(burst(3)) == [200] * 3
    rows(3)
    wait_for(lambda: len([h for h in leases()
                          if h.amount_nano >= budget_leases.LEASE_UNITS * r]) == 3)
    assert len({h.trace_id.rsplit(":", 2)[1] for h in leases()}) == 3  # one per process pid
    before = probe()
    # Every request stays in flight a while, so each process holds 30 at once.
    assert asyncio.run(burst(90, **{"x-fake-scenario": "delay=0.2"})) == [200] * 90
    events = rows(93, timeout=60)
    assert probe() == before + 1  # no request of the burst needed a hold of its own
    assert {e.status for e in events} == {"ok"}
    start = reports.period("month")[0].timestamp()
    counter = Spend.objects.get(agent="", period="monthly", period_start=start)
    assert counter.spent_nano == sum(e.cost_nano_usd for e in events)
    wait_for(lambda: not Hold.objects.exclude(trace_id__startswith=standings.LEASE_PREFIX).exists())
    [standing] = standings.current()
    assert standing.leased_nano == standing.held_nano > 0
    assert standing.spent_nano + standing.held_nano <= standing.budget.limit_nano
    out = io.StringIO()
    call_command("budget", "status", stdout=out)
    # All that is held is leases (amounts may move with a top-up meanwhile).
    assert re.search(r"\| (\$[\d.,]+) held in flight \(\1 of it by proxy leases\)",
                     out.getvalue())
    for worker in workers:
        worker.stop()
    assert Hold.objects.count() == 0


def test_it_voids_a_killed_processs_lease_after_the_hold_ttl(start_server, fake, rows):
    limit = budget("10", "block")
    server = start_server()
    spend(server, 100)
    rows(1)
    wait_for(lambda: len(leases()) == 1)
    server.stop(signal.SIGKILL)  # no atexit: the lease stays behind
    [lease] = leases()
    [standing] = standings.current()
    assert standing.leased_nano == lease.amount_nano > 0
    # Leave less room than the dead lease holds: while it counts, a small request is blocked.
    Spend.objects.filter(pk=standing.spend_id).update(
        spent_nano=limit.limit_nano - lease.amount_nano // 2)

    def small() -> admission.Verdict:
        return admission.admit(new_trace_id(), "", "anthropic", "claude-haiku-4-5", 500, 100,
                           time.time())

    assert small().blocked
    Hold.objects.filter(pk=lease.pk).update(created=F("created") - standings.hold_ttl() - 1)
    [standing] = standings.current()
    assert standing.held_nano == standing.leased_nano == 0
    verdict = small()
    assert not verdict.action and verdict.held


# --- in-process: what the request path does and does not do --------------------------------


class NoExecutor(Executor):
    def submit(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the request path hopped to a budget thread")


@pytest.fixture
def lessor(monkeypatch: pytest.MonkeyPatch) -> Iterator[budget_leases.Lessor]:
    """A lessor of this test's own, refreshed by hand: no background thread in pytest."""
    fresh = budget_leases.Lessor()
    monkeypatch.setattr(fresh, "start", lambda: None)
    monkeypatch.setattr(budget_leases, "lessor", fresh)
    # A budget thread of this test's own, whose connection goes before the test database does.
    pool = ThreadPoolExecutor(max_workers=1)
    monkeypatch.setattr(admission, "_pool", pool)
    yield fresh
    fresh.release_all()
    pool.submit(connections.close_all).result()
    pool.shutdown()


@pytest.fixture
def sql(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every statement any thread runs from now on."""
    seen: list[str] = []
    execute, executemany = CursorWrapper.execute, CursorWrapper.executemany

    def spy_execute(self: CursorWrapper, statement: str, params: Any = None) -> Any:
        seen.append(statement)
        return execute(self, statement, params)

    def spy_executemany(self: CursorWrapper, statement: str, params: Any) -> Any:
        seen.append(statement)
        return executemany(self, statement, params)

    monkeypatch.setattr(CursorWrapper, "execute", spy_execute)
    monkeypatch.setattr(CursorWrapper, "executemany", spy_executemany)
    return seen


def request(agent: str = "") -> Record:
    return Record(trace_id=new_trace_id(), provider="anthropic", event_type="messages",
                  endpoint="/v1/messages", ts=time.time(), agent_id=agent,
                  requested_model=MODEL, sent_model=MODEL)


def check(rec: Record) -> admission.Verdict:
    return asyncio.run(admission.check(rec, dict(PAYLOAD), BODY_SIZE))


def leased(lessor: budget_leases.Lessor, period: str = "monthly") -> budget_leases.Lease:
    first = check(request())  # nothing cached yet: the exact path, which also sizes the lease
    assert first.held and not first.action
    lessor.refresh()
    return lessor.leases[("", period)]


@pytest.mark.django_db(transaction=True)
def test_it_admits_on_a_lease_without_a_query_or_a_thread_hop(lessor, sql, monkeypatch):
    budget("100", "block", alert=1)
    lease = leased(lessor)
    r = standings.reservation(MODEL, "anthropic", BODY_SIZE, MAX_TOKENS)
    assert lease.free == budget_leases.LEASE_UNITS * r and lease.inflight == 0
    assert Hold.objects.get(pk=lease.hold_id).amount_nano == lease.free
    Spend.objects.filter(pk=lease.spend_id).update(spent_nano=F("spent_nano") + 2 * 10**9)
    lessor.refresh()  # $2 spent elsewhere: past the 1 % alert

    monkeypatch.setattr(admission, "_pool", NoExecutor())
    del sql[:]
    rec = request()
    verdict = check(rec)
    assert sql == []
    assert (verdict.action, verdict.held, verdict.alert) == ("", False, True)
    assert rec.leases == [(lease.hold_id, r)]
    assert (lease.free, lease.inflight) == ((budget_leases.LEASE_UNITS - 1) * r, r)

    # An agent without a budget of its own, when only another agent has one: no I/O either.
    Budget.objects.all().delete()
    budget("100", "block", agent="coder")
    lessor.read_budgets()
    del sql[:]
    assert check(request("reviewer")) is admission.WITHIN
    assert sql == []
    assert Hold.objects.exists() and sql  # the spy does see this thread's queries


@pytest.mark.django_db(transaction=True)
def test_it_settles_a_leased_request_against_its_lease_row_and_in_flight_figure(lessor):
    budget("100", "block")
    lease = leased(lessor)
    first = Event.objects.count()
    rec = request()
    assert not check(rec).held
    [(hold_id, r)] = rec.leases
    row = Hold.objects.get(pk=hold_id).amount_nano
    free, spent = lease.free, lease.spent_nano
    rec.usage = TokenUsage(input_tokens=20, output_tokens=300)
    rec.finish("ok")
    LedgerWriter()._write([rec])  # the writer's transaction, on this thread

    event = Event.objects.get(trace_id=rec.trace_id)
    assert Event.objects.count() == first + 1 and 0 < event.cost_nano_usd < r
    assert Hold.objects.get(pk=hold_id).amount_nano == row - r
    assert (lease.free, lease.inflight) == (free, 0)
    assert lease.spent_nano == spent + event.cost_nano_usd
    counter = Spend.objects.get(pk=lease.spend_id)
    assert counter.spent_nano == sum(Event.objects.values_list("cost_nano_usd", flat=True))
    lessor.release_all()
    assert not leases()


@pytest.mark.django_db(transaction=True)
def test_it_releases_a_leases_free_part_near_the_limit(lessor):
    limit = budget("100", "block")
    lease = leased(lessor)
    r = standings.reservation(MODEL, "anthropic", BODY_SIZE, MAX_TOKENS)
    # Less unbound capacity than NEAR_UNITS requests: the lease gives back what it has free.
    Spend.objects.filter(pk=lease.spend_id).update(
        spent_nano=limit.limit_nano - (budget_leases.NEAR_UNITS - 1) * r)
    lessor.refresh()
    assert ("", "monthly") not in lessor.leases and not leases()
    rec = request()
    verdict = check(rec)  # the exact path: a request's own hold
    assert verdict.held and not rec.leases
    assert Hold.objects.get(trace_id=rec.trace_id).amount_nano == r


@pytest.mark.django_db(transaction=True)
def test_it_moves_a_lease_to_the_new_period_and_settles_the_old_one(lessor):
    budget("100", "block", period="daily")
    lease = leased(lessor, "daily")
    rec = request()
    check(rec)
    [(old_id, r)] = rec.leases
    # Tomorrow: the refresh leases against the new day's counter, the old row keeps r.
    tomorrow = reports.period("today")[1].timestamp() + 1
    Hold.objects.update(created=tomorrow - 30)  # renewed, as a live lessor does, just before
    lessor.refresh(tomorrow)
    new = lessor.leases[("", "daily")]
    assert new is not lease and new.spend_id != lease.spend_id
    assert Hold.objects.get(pk=old_id).amount_nano == r
    rec.usage = TokenUsage(input_tokens=20, output_tokens=300)
    rec.finish("ok")
    LedgerWriter()._write([rec])
    assert Hold.objects.get(pk=old_id).amount_nano == 0 and lease.inflight == 0
    lessor.refresh(tomorrow)
    assert not Hold.objects.filter(pk=old_id).exists()
    assert [h.pk for h in leases()] == [new.hold_id]


@pytest.mark.django_db(transaction=True)
def test_it_gives_back_its_free_lease_when_an_exact_check_would_see_it_exceeded(lessor):
    limit = budget("100", "block")
    lease = leased(lessor)
    r = standings.reservation(MODEL, "anthropic", BODY_SIZE, MAX_TOKENS)
    # Counting this process's own free lease (and the first request's hold), nothing is left.
    free = lease.free
    Spend.objects.filter(pk=lease.spend_id).update(spent_nano=limit.limit_nano - free - r)
    [standing] = standings.current()
    assert standing.exceeded and standing.leased_nano == lease.free
    verdict = admission.admit(new_trace_id(), "", "anthropic", "claude-haiku-4-5", 500, 100,
                          time.time())
    assert verdict.held and not verdict.action
    assert lease.free == 0 and Hold.objects.get(pk=lease.hold_id).amount_nano == 0
    # Another process's lease is a reservation like any hold: that one still counts.
    Hold.objects.filter(pk=lease.hold_id).update(amount_nano=free)
    assert admission.admit(new_trace_id(), "", "anthropic", "claude-haiku-4-5", 500, 100,
                       time.time()).blocked


@pytest.mark.django_db(transaction=True)
def test_it_stops_admitting_on_a_lease_once_spend_leaves_it_no_room(lessor):
    budget("100", "block")
    lease = leased(lessor)
    key = ("", "monthly", lease.start)
    # Requests far costlier than their reservations land (this process's writer says so): the
    # spend plus the whole lease just fits the $100 limit, then no longer does.
    lessor.spent({key: 100 * 10**9 - lease.free - lease.inflight - lease.spent_nano})
    fits = request()
    assert not check(fits).held and fits.leases  # admitted on the lease
    lessor.spent({key: 1})
    over = request()
    verdict = check(over)
    assert over.leases == [] and verdict.held  # decided exactly, with a hold of its own
