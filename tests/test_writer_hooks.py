"""The ledger writer's hooks (telemetry.writer): what other apps may count on when they listen.

In-process, on this thread (LedgerWriter()._write is what the writer thread runs), with hooks
of these tests' own in place of the budgets'.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection

from telemetry import writer
from telemetry.models import Event
from telemetry.record import Record, new_trace_id
from telemetry.rows import Rows


def request() -> Record:
    return Record(trace_id=new_trace_id(), provider="openai", event_type="chat.completions",
                  endpoint="/v1/chat/completions", ts=time.time())


@pytest.fixture
def hooks(monkeypatch: pytest.MonkeyPatch, settings: Any, tmp_path: Any) -> None:
    """Only this test's hooks; a row set aside goes under tmp_path."""
    monkeypatch.setattr(writer, "_on_batch", [])
    monkeypatch.setattr(writer, "_on_give_up", [])
    monkeypatch.setattr(writer, "_on_stop", [])
    settings.TOKENPAK_HOME = str(tmp_path)


def listener(name: str, calls: list[tuple], refuse: str = "") -> writer.BatchHook:
    """A hook that notes each call, marks the rows it sees (a write in the transaction), and
    fails any part holding `refuse`'s row."""

    def hook(cursor: Any, records: list[Record], rows: list[Rows]
             ) -> Callable[[], None]:
        seen = ([r.trace_id for r in records], [row.event["trace_id"] for row in rows])
        calls.append((name, connection.in_atomic_block, *seen))
        Event.objects.filter(trace_id__in=seen[1]).update(agent_id=f"seen-by-{name}")
        if refuse in seen[1]:
            raise ValueError("this part is refused")
        return lambda: calls.append((f"{name} after commit", connection.in_atomic_block,
                                     *seen))

    return hook


@pytest.mark.django_db(transaction=True)
def test_it_runs_batch_hooks_in_the_transaction_in_order_then_their_after_commit_work(hooks):
    calls: list[tuple] = []
    writer.on_batch(listener("first", calls))
    writer.on_batch(listener("second", calls))
    a, b = request(), request()

    writer.LedgerWriter()._write([a, b])

    both = ([a.trace_id, b.trace_id], [a.trace_id, b.trace_id])
    assert calls == [("first", True, *both), ("second", True, *both),
                     ("first after commit", False, *both), ("second after commit", False, *both)]
    # Each hook's writes committed with the rows; the later hook's last.
    assert set(Event.objects.values_list("agent_id", flat=True)) == {"seen-by-second"}


@pytest.mark.django_db(transaction=True)
def test_it_runs_the_hooks_once_for_each_committed_part_of_a_split_batch(hooks):
    """A part that rolls back takes its hooks' writes with it and runs no after-commit work;
    the row at fault, set aside, comes to the hooks as a request with no row."""
    calls: list[tuple] = []
    a, x, b = request(), request(), request()
    writer.on_batch(listener("hook", calls, refuse=x.trace_id))

    writer.LedgerWriter()._write([a, x, b])

    committed = [c[2:] for c in calls if c[0] == "hook after commit"]
    assert committed == [([a.trace_id], [a.trace_id]), ([x.trace_id], []),
                         ([b.trace_id], [b.trace_id])]
    assert all(inside for name, inside, *_ in calls if name == "hook")
    assert not any(inside for name, inside, *_ in calls if name == "hook after commit")
    assert dict(Event.objects.values_list("trace_id", "agent_id")) == {
        a.trace_id: "seen-by-hook", b.trace_id: "seen-by-hook"}


@pytest.mark.django_db(transaction=True)
def test_it_gives_up_hooks_the_requests_it_can_make_no_row_of(hooks, monkeypatch):
    given_up: list[str] = []
    writer.on_give_up(lambda records: given_up.extend(r.trace_id for r in records))
    a, x = request(), request()
    rows_of = writer.rows_of

    def fails_for_x(r: Record) -> Rows:
        if r is x:
            raise ValueError("no row")
        return rows_of(r)

    monkeypatch.setattr(writer, "rows_of", fails_for_x)
    writer.LedgerWriter()._write([a, x])

    assert given_up == [x.trace_id]
    assert list(Event.objects.values_list("trace_id", flat=True)) == [a.trace_id]


def test_it_runs_stop_hooks_after_the_last_rows(hooks, monkeypatch):
    done: list[str] = []
    w = writer.LedgerWriter()
    monkeypatch.setattr(w, "flush", lambda timeout=10.0: done.append("flush") or True)
    writer.on_stop(lambda: done.append("first"))
    writer.on_stop(lambda: 1 / 0)  # a failing hook is logged; the next one still runs
    writer.on_stop(lambda: done.append("last"))

    w.stop()

    assert done == ["flush", "first", "last"]
