"""Bytes and time of every page over a ledger with many distinct agents (issue 16, item 4).

    TOKENPAK_HOME=/tmp/tp-many python bench/seed.py 100000 100000   # 100,000 agents, once
    TOKENPAK_HOME=/tmp/tp-many python bench/cardinality.py [runs]

Each page goes through Django's test client (no network), signed in as a superuser or with the
local API token, over all time (since=2000-01-01), after a warm-up; the time is the median of
the runs. A page's size must not grow with the number of agents.
"""

from __future__ import annotations

import io
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tokenpak_site.settings")

import django

django.setup()

from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.test import override_settings  # noqa: E402

from bench.admin import timed  # noqa: E402
from bench.dashboard import clients  # noqa: E402
from telemetry.models import Event  # noqa: E402

if TYPE_CHECKING:
    # What the test client answers: the view's response, with the request and context added.
    from django.test.client import _MonkeyPatchedWSGIResponse as Response

ALL = {"since": "2000-01-01"}


def main(runs: int) -> int:
    browser, script = clients()
    agents = Event.objects.values("agent_id").distinct().count()
    print(f"{Event.objects.count():,} rows, {agents:,} agents in {settings.TOKENPAK_DB_LABEL}; "
          f"median of {runs} runs")
    calls: list[tuple[str, Callable[[], Response]]] = [
        ("dashboard overview", lambda: browser.get("/dashboard/", ALL)),
        ("dashboard finops", lambda: browser.get("/dashboard/finops", ALL)),
        ("dashboard finops, by_agent CSV",
         lambda: browser.get("/dashboard/finops", {**ALL, "format": "csv",
                                                   "section": "by_agent"})),
        ("dashboard finops JSON", lambda: browser.get("/dashboard/finops",
                                                      {**ALL, "format": "json"})),
        ("dashboard engineering", lambda: browser.get("/dashboard/engineering", ALL)),
        ("api summary", lambda: script.get("/v1/telemetry/summary", ALL)),
        ("admin list", lambda: browser.get("/admin/telemetry/event/")),
        ("admin list, facets", lambda: browser.get("/admin/telemetry/event/",
                                                   {"_facets": "1"})),
    ]
    for name, request in calls:
        try:
            times, response = timed(request, runs)
            size = len(response.content)
            status = response.status_code
        except Exception as e:
            print(f"{name:36} FAILED: {type(e).__name__}: {str(e)[:60]}")
            continue
        print(f"{name:36} {size:>12,} B {statistics.median(times):9.1f} ms  status {status}")
    started = time.monotonic()
    out = io.StringIO()
    call_command("cost", "--since", "2000-01-01", "--by-agent", stdout=out)
    print(f"{'cost --by-agent':36} {len(out.getvalue()):>12,} B "
          f"{(time.monotonic() - started) * 1000:9.1f} ms")
    return 0


if __name__ == "__main__":
    with override_settings(ALLOWED_HOSTS=[*settings.ALLOWED_HOSTS, "testserver"]):
        sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 3))
