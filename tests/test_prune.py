"""manage.py prune: old requests go with their usage, cost and segment rows, in chunks."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.db.models import F

from telemetry import retention
from telemetry.models import Cost, Event, RecipeHit, Segment, Usage
from tests.live import ROOT

DAY = 86400.0


def age(trace_ids: list[str], days: float) -> None:
    """Make rows written by real proxy traffic look `days` old: the proxy stamps ts (and
    created_at, its datetime twin) at arrival, and nothing else can make an old row."""
    Event.objects.filter(trace_id__in=trace_ids).update(
        ts=F("ts") - days * DAY, created_at=F("created_at") - timedelta(days=days)
    )


def add_segments(trace_ids: list[str]) -> None:
    # The test traffic has nothing to compress: two segment rows and one recipe hit each, as
    # a compressed request has.
    Segment.objects.bulk_create(
        Segment(trace_id=t, segment_type=kind, tokens_raw=100, tokens_after=60)
        for t in trace_ids
        for kind in ("json", "tool")
    )
    RecipeHit.objects.bulk_create(RecipeHit(trace_id=t, recipe="json-minify", hits=1)
                                  for t in trace_ids)


def children(trace_ids: list[str] | None = None) -> dict[str, int]:
    """Child rows left (for these requests, or orphans: rows whose request is gone)."""
    counts = {}
    for model in (Usage, Cost, Segment, RecipeHit):
        qs = model.objects.all()
        if trace_ids is None:
            qs = qs.exclude(trace_id__in=Event.objects.values("trace_id"))
        else:
            qs = qs.filter(trace_id__in=trace_ids)
        counts[model._meta.db_table] = qs.count()
    return counts


NONE_LEFT = {"tp_usage": 0, "tp_costs": 0, "tp_segments": 0, "tp_recipe_hits": 0}


@pytest.fixture
def ledger(traffic: list[Event]) -> dict[str, list[str]]:
    """The 7 requests of `traffic`: 3 aged 40 days, 2 aged 10 days, 2 fresh; all with
    segments. (Never past 90 days: the shared server applies the default retention.)"""
    ids = [e.trace_id for e in traffic]
    groups = {"40d": ids[:3], "10d": ids[3:5], "fresh": ids[5:]}
    age(groups["40d"], 40)
    age(groups["10d"], 10)
    add_segments(ids)
    return groups


def prune(**options: object) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("prune", stdout=out, stderr=err, **options)
    return out.getvalue(), err.getvalue()


def left() -> set[str]:
    return set(Event.objects.values_list("trace_id", flat=True))


def test_it_deletes_requests_older_than_days_with_their_usage_cost_and_segments(ledger):
    out, err = prune(days=5)

    assert out.startswith("prune: deleted 5 requests older than ")
    assert out.endswith(" (5 days)\n")
    assert out.count("\n") == 1
    assert err == ""  # one chunk: no progress lines
    assert left() == set(ledger["fresh"])
    assert children(ledger["40d"] + ledger["10d"]) == NONE_LEFT
    assert children() == NONE_LEFT  # no orphans anywhere
    assert children(ledger["fresh"]) == {"tp_usage": 2, "tp_costs": 2, "tp_segments": 4,
                                          "tp_recipe_hits": 2}


@pytest.mark.parametrize(
    ("age_text", "deleted", "label"),
    [("20d", 3, "20 days"), ("1d", 5, "1 day"), ("1w", 5, "1 week"), ("2w", 3, "2 weeks"),
     ("1m", 3, "1 month"), ("12W", 0, "12 weeks")],
)
def test_it_takes_older_than_in_days_weeks_and_months(ledger, age_text, deleted, label):
    out, _ = prune(older_than=age_text)

    if deleted:
        assert out.startswith(f"prune: deleted {deleted} requests older than ")
    else:
        assert out.startswith("prune: nothing older than ")
        assert out.endswith(f" ({label}) to delete\n")
    assert f"({label})" in out
    assert len(left()) == 7 - deleted
    assert children() == NONE_LEFT


def test_it_counts_and_deletes_nothing_on_a_dry_run(ledger):
    out, _ = prune(days=5, dry_run=True)

    assert out.startswith("prune: would delete 5 requests older than ")
    assert out.endswith(" (5 days) (dry run, nothing deleted)\n")
    assert len(left()) == 7
    assert Usage.objects.count() == Cost.objects.count() == 7
    assert Segment.objects.count() == 14


def test_it_prunes_to_retention_days_without_arguments(ledger, settings):
    settings.RETENTION_DAYS = 30

    out, _ = prune()

    assert out.startswith("prune: deleted 3 requests older than ")
    assert out.endswith(" (30 days)\n")
    assert left() == set(ledger["10d"] + ledger["fresh"])


def test_it_prunes_nothing_when_retention_is_off(ledger, settings):
    settings.RETENTION_DAYS = 0

    out, _ = prune()

    assert out == "prune: retention is off (telemetry.retention_days = 0), nothing pruned\n"
    assert len(left()) == 7


def test_it_says_so_when_nothing_is_old_enough(traffic):
    out, _ = prune(days=5)
    dry, _ = prune(days=5, dry_run=True)

    assert out.startswith("prune: nothing older than ")
    assert out.endswith(" (5 days) to delete\n")
    assert dry == out
    assert len(left()) == 7


def test_it_deletes_in_chunks_one_transaction_each_with_a_progress_line(ledger):
    out, err = prune(days=5, chunk=2)

    assert err.splitlines() == ["pruned 2 / 5", "pruned 4 / 5", "pruned 5 / 5"]
    assert out.startswith("prune: deleted 5 requests older than ")
    assert left() == set(ledger["fresh"])
    assert children() == NONE_LEFT


def test_it_commits_each_chunk_before_the_next(ledger):
    """Another connection sees each chunk gone as soon as progress reports it."""
    seen: list[tuple[int, int, int]] = []

    def from_another_connection() -> None:
        try:
            old = set(ledger["40d"] + ledger["10d"])
            seen.append((len(old & left()), Usage.objects.filter(trace_id__in=old).count(),
                         Segment.objects.filter(trace_id__in=old).count()))
        finally:
            connection.close()

    def progress(done: int, total: int) -> None:
        t = threading.Thread(target=from_another_connection)
        t.start()
        t.join()

    cutoff = Event.objects.get(trace_id=ledger["fresh"][0]).created_at - timedelta(days=5)
    assert retention.prune(cutoff, chunk=2, progress=progress) == 5

    # Oldest first, two requests (and their 2 usage and 4 segment rows) per transaction.
    assert seen == [(3, 3, 6), (1, 1, 2), (0, 0, 0)]


def test_it_rejects_days_with_older_than():
    with pytest.raises(CommandError, match=r"^prune: give --days or --older-than, not both$"):
        prune(days=5, older_than="30d")


@pytest.mark.parametrize("text", ["3x", "0d", "d", "-3d", "1.5w"])
def test_it_rejects_a_bad_duration(text):
    with pytest.raises(CommandError, match=rf"^prune: bad duration '{text}': use a whole number"):
        prune(older_than=text)


@pytest.mark.parametrize("days", [0, -3])
def test_it_rejects_zero_or_negative_days(days):
    with pytest.raises(CommandError, match=rf"^prune: --days must be .* ≥ 1, got {days}$"):
        prune(days=days)


def test_it_rejects_a_cutoff_before_the_calendar():
    with pytest.raises(CommandError, match="further back than the calendar"):
        prune(days=10**9)


def test_it_rejects_a_chunk_below_1():
    with pytest.raises(CommandError, match=r"--chunk must be at least 1, got 0"):
        prune(days=5, chunk=0)


@pytest.mark.live
@pytest.mark.parametrize(
    ("args", "message"),
    [(["--older-than", "3x"], "CommandError: prune: bad duration '3x'"),
     (["--days", "5", "--older-than", "30d"], "CommandError: prune: give --days or"),
     (["--days", "0"], "CommandError: prune: --days must be")],
)
def test_it_exits_non_zero_with_one_line_from_the_command_line(args, message):
    done = subprocess.run(
        [sys.executable, "manage.py", "prune", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"},
    )

    assert done.returncode != 0
    assert done.stdout == ""
    assert done.stderr.startswith(message)
    assert done.stderr.count("\n") == 1
