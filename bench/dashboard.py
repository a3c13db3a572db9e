"""Time the dashboard's views and the telemetry REST API on a big ledger (bench/seed.py).

    TOKENPAK_HOME=/tmp/tp-bench python bench/seed.py 1000000     # once
    TOKENPAK_HOME=/tmp/tp-bench python bench/dashboard.py [runs]

Each page and API call goes through Django's test client (URL resolver, middleware, view,
template; no network), signed in as a superuser or with the local API token, after a warm-up;
the figure is the median server time of several runs. The target is 500 ms at 1,000,000 rows.
Exits non-zero when a call does not answer 200 or misses the target.
"""

from __future__ import annotations

import os
import statistics
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tokenpak_site.settings")

import django

django.setup()

from django.conf import settings  # noqa: E402
from django.contrib.auth import get_user_model  # noqa: E402
from django.db import connection  # noqa: E402
from django.test import Client, override_settings  # noqa: E402

from bench.admin import WARMUP, timed  # noqa: E402
from telemetry import access, reports  # noqa: E402
from telemetry.models import Event  # noqa: E402

if TYPE_CHECKING:
    # What the test client answers: the view's response, with the request and context added.
    from django.test.client import _MonkeyPatchedWSGIResponse as Response

TARGET_MS = 500.0


async def _first_chunk(content: Any) -> None:
    async for _ in content:
        break
    await content.aclose()  # as a client leaving after the first rows


def clients() -> tuple[Client, Client]:
    """A browser signed in as the bench superuser, and a script with the local API token."""
    user = get_user_model().objects.filter(username="bench").first()
    if user is None:
        user = get_user_model().objects.create_superuser("bench", "bench@localhost", None)
    browser = Client()
    browser.force_login(user)
    return browser, Client(headers={"Authorization": f"Bearer {access.token()}"})


def main(runs: int) -> int:
    rows = Event.objects.count()
    if not rows:
        print(f"no ledger rows in {settings.TOKENPAK_DB_LABEL}: seed it first with "
              "`TOKENPAK_HOME=... python bench/seed.py 1000000`", file=sys.stderr)
        return 2
    browser, script = clients()

    model = Event.objects.order_by("model").values_list("model", flat=True).first()
    assert model is not None  # the ledger has rows
    trace = Event.objects.order_by("-ts").values_list("trace_id", flat=True)[rows // 3]
    month = (reports.period("today")[0] - timedelta(days=29)).date().isoformat()
    all_time: dict[str, int | str] = {"limit": 1000, "since": "2000-01-01"}
    deep = script.get("/v1/telemetry/sessions", all_time)
    cursor = deep.json()["next_cursor"]
    calls: list[tuple[str, Callable[[], Response]]] = [
        ("dashboard overview", lambda: browser.get("/dashboard/")),
        ("dashboard overview, live part", lambda: browser.get("/dashboard/?partial=live")),
        ("dashboard finops", lambda: browser.get("/dashboard/finops")),
        ("dashboard engineering", lambda: browser.get("/dashboard/engineering")),
        ("dashboard sessions", lambda: browser.get("/dashboard/sessions")),
        ("dashboard compression", lambda: browser.get("/dashboard/compression")),
        ("dashboard trace page", lambda: browser.get(f"/dashboard/sessions/{trace}/")),
        (f"dashboard finops, model={model}",
         lambda: browser.get("/dashboard/finops", {"model": model})),
        ("dashboard finops, by-model CSV",
         lambda: browser.get("/dashboard/finops", {"format": "csv", "section": "by_model"})),
        ("dashboard sessions CSV (first rows)",
         lambda: browser.get("/dashboard/sessions", {"format": "csv"})),
        ("api summary", lambda: script.get("/v1/telemetry/summary")),
        ("api summary, this month", lambda: script.get("/v1/telemetry/summary",
                                                       {"period": "month"})),
        ("api sessions", lambda: script.get("/v1/telemetry/sessions")),
        ("api sessions, all time, page 2 of 1000",
         lambda: script.get("/v1/telemetry/sessions", {"limit": 1000, "since": "2000-01-01",
                                                       "cursor": cursor})),
        ("api export csv (first rows)",
         lambda: script.get("/v1/telemetry/export", {"format": "csv"})),
        ("api traces/{id}", lambda: script.get(f"/v1/telemetry/traces/{trace}")),
        # Wider than the default range: measured so the cost of a month shows.
        ("dashboard finops, last 30 days", lambda: browser.get("/dashboard/finops",
                                                               {"since": month})),
        ("dashboard engineering, last 30 days",
         lambda: browser.get("/dashboard/engineering", {"since": month})),
        ("dashboard compression, last 30 days",
         lambda: browser.get("/dashboard/compression", {"since": month})),
    ]
    in_range = reports.events(reports.Filters(
        since=reports.period("today")[0] - timedelta(days=6))).count()
    print(f"{rows:,} rows in {settings.TOKENPAK_DB_LABEL} ({connection.vendor}), "
          f"{in_range:,} in the default range (last 7 days); median of {runs} runs after "
          f"{WARMUP} warm-up runs")
    failed = 0
    for name, request in calls:
        # An export answers when its first rows are out.
        times, response = timed(request, runs, _first_chunk)
        median = statistics.median(times)
        ok = response.status_code == 200
        # The default views are held to the target; the 30-day ones are reported.
        within = median < TARGET_MS or "30 days" in name
        failed += not (ok and within)
        print(f"{name:42} {median:8.1f} ms  (min {min(times):.1f}, max {max(times):.1f})"
              + ("" if ok else f"  FAILED: status {response.status_code}")
              + ("" if within else f"  OVER {TARGET_MS:.0f} ms"))
    return 1 if failed else 0


if __name__ == "__main__":
    # The test client calls itself "testserver"; settings.py allows only loopback names.
    with override_settings(ALLOWED_HOSTS=[*settings.ALLOWED_HOSTS, "testserver"]):
        sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 5))
