"""The server applies telemetry.retention_days by itself, once a day, off the request path."""

from __future__ import annotations

import time

from django.db import OperationalError

from telemetry import retention
from telemetry.models import Cost, Event, Segment, Usage
from tests.conftest import send, wait_for
from tests.test_prune import NONE_LEFT, add_segments, age, children


def _traffic(url: str, n: int, rows) -> list[str]:
    for i in range(n):
        send(url, "openai" if i % 2 else "anthropic",
             "gpt-4o-mini" if i % 2 else "claude-haiku-4-5", usage={})
    return [e.trace_id for e in rows(n)]


def test_it_prunes_old_rows_in_a_running_server_without_any_command(start_server, rows):
    # The first run comes 4 s after the server's first request: time to age the rows first.
    server = start_server(
        TOKENPAK_RETENTION_DAYS="1",
        TOKENPAK_RETENTION_FIRST_RUN_SECONDS="4",
        TOKENPAK_LOG_DESTINATION="stdout",
    )
    ids = _traffic(server.url, 4, rows)
    old, fresh = ids[:2], ids[2:]
    age(old, 2)
    add_segments(ids)

    wait_for(lambda: not Event.objects.filter(trace_id__in=old).exists(), timeout=30)

    assert set(Event.objects.values_list("trace_id", flat=True)) == set(fresh)
    assert children(old) == NONE_LEFT
    assert children() == NONE_LEFT
    assert Usage.objects.count() == Cost.objects.count() == 2
    assert Segment.objects.count() == 4
    wait_for(lambda: "retention: deleted" in server.output())
    lines = [ln for ln in server.output().splitlines() if "retention:" in ln]
    assert len(lines) == 1
    assert "retention: deleted 2 requests older than " in lines[0]
    assert " (1 day) in " in lines[0]
    # The proxy still answers and records after the run.
    assert send(server.url, "openai", "gpt-4o-mini", usage={}) == 200
    wait_for(lambda: Event.objects.count() == 3)


def test_it_never_prunes_when_retention_days_is_0(start_server, rows):
    server = start_server(
        TOKENPAK_RETENTION_DAYS="0",
        TOKENPAK_RETENTION_FIRST_RUN_SECONDS="0.5",
        TOKENPAK_LOG_DESTINATION="stdout",
    )
    ids = _traffic(server.url, 2, rows)
    # Past any sensible retention, but under the 90 days the shared test server applies.
    age(ids, 60)

    time.sleep(2)  # four times the first-run delay: a run would have happened by now

    assert Event.objects.count() == 2
    assert "retention: off (telemetry.retention_days = 0)" in server.output()
    assert "retention: deleted" not in server.output()


def test_it_runs_in_chunks_with_a_pause_between_them_and_logs_one_line(
    traffic, monkeypatch, caplog
):
    # The pause is what lets the ledger writer take SQLite's one write lock between chunks.
    ids = [e.trace_id for e in traffic]
    age(ids[:5], 10)
    monkeypatch.setattr(retention, "BACKGROUND_CHUNK", 2)
    pauses: list[float] = []
    monkeypatch.setattr(retention.time, "sleep", pauses.append)

    with caplog.at_level("INFO", logger="tokenpak.retention"):
        assert retention.run_once(5) is True

    assert pauses == [retention.BACKGROUND_PAUSE_SECONDS] * 2  # 3 chunks: 2 pauses
    assert set(Event.objects.values_list("trace_id", flat=True)) == set(ids[5:])
    assert children() == NONE_LEFT
    assert [r.getMessage()[:40] for r in caplog.records] == [
        "retention: deleted 5 requests older than"
    ]
    assert " (5 days) in " in caplog.records[0].getMessage()


def test_it_logs_a_failed_run_and_keeps_the_thread_alive(transactional_db, monkeypatch, caplog):
    def locked(*args: object, **kwargs: object) -> int:
        raise OperationalError("database is locked")

    monkeypatch.setattr(retention, "prune", locked)

    with caplog.at_level("INFO", logger="tokenpak.retention"):
        assert retention.run_once(90) is False  # _daily retries in an hour instead of a day

    assert [r.getMessage() for r in caplog.records] == [
        "retention: run failed, retrying in 60 min: OperationalError: database is locked"
    ]
