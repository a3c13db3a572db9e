"""Time the ledger's admin pages on a big ledger (seeded by bench/seed.py).

    TOKENPAK_HOME=/tmp/tp-bench python bench/seed.py 1000000     # once, ~2 minutes
    TOKENPAK_HOME=/tmp/tp-bench python bench/admin.py [runs]

Renders each page through Django's test client (the whole admin stack, no network), logged in
as a superuser it creates if needed, after a warm-up, and prints the median of several runs.
Exits non-zero only when a page does not answer 200.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tokenpak_site.settings")

import django
from asgiref.sync import async_to_sync

django.setup()

from django.conf import settings  # noqa: E402
from django.contrib.auth import get_user_model  # noqa: E402
from django.db import connection  # noqa: E402
from django.http import StreamingHttpResponse  # noqa: E402
from django.test import Client, override_settings  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402

from telemetry.models import Event  # noqa: E402

if TYPE_CHECKING:
    # What the test client answers: the view's response, with the request and context added.
    from django.test.client import _MonkeyPatchedWSGIResponse as Response

URL = "/admin/telemetry/event/"
WARMUP = 2


async def _drain(content: Any) -> None:
    async for _ in content:
        pass


def timed(request: Callable[[], Response], runs: int,
          consume: Callable[[Any], Any] = _drain) -> tuple[list[float], Response]:
    """Median-ready times in ms of runs calls after WARMUP; a streamed answer is read with
    consume (all of it by default) inside the timing."""
    for _ in range(WARMUP):
        request()
    times = []
    response: Response | None = None
    for _ in range(runs):
        started = time.perf_counter()
        response = request()
        if response.streaming:  # CSV/JSON exports stream from an async iterator
            async_to_sync(consume)(cast(StreamingHttpResponse, response).streaming_content)
        times.append((time.perf_counter() - started) * 1000)
    assert response is not None
    return times, response


def main(runs: int) -> int:
    rows = Event.objects.count()
    if not rows:
        print(f"no ledger rows in {settings.TOKENPAK_DB_LABEL}: seed it first with "
              "`TOKENPAK_HOME=... python bench/seed.py 1000000`", file=sys.stderr)
        return 2
    user = get_user_model().objects.filter(username="bench").first()
    if user is None:
        user = get_user_model().objects.create_superuser("bench", "bench@localhost", None)
    client = Client()
    client.force_login(user)

    model = Event.objects.order_by("model").values_list("model", flat=True).distinct().first()
    middle = Event.objects.order_by("ts").values_list("ts", flat=True)[rows // 2]
    found = (Event.objects.filter(ts__gte=middle).order_by("ts")
             .values_list("trace_id", "request_id").first())
    assert found is not None  # rows above the middle one's ts: that one at least
    trace, request_id = found
    filtered = f"{URL}?model={model}&period=month"
    export_filter = f"{URL}export/?model={model}&period=today"
    export_rows = client.get(f"{URL}?model={model}&period=today")

    pages: list[tuple[str, Callable[[], Response]]] = [
        ("changelist", lambda: client.get(URL)),
        (f"filtered: model={model}, this month", lambda: client.get(filtered)),
        ("search: trace id", lambda: client.get(URL, {"q": trace})),
        ("detail page", lambda: client.get(f"{URL}{trace}/change/")),
        (f"export CSV: model={model}, today",
         lambda: client.post(export_filter, {"format": "0"})),
        # Not required to be fast, measured so a regression shows.
        ("search: request id (no index)", lambda: client.get(URL, {"q": request_id})),
        ("filtered: default-priced", lambda: client.get(URL, {"default_priced": "yes"})),
        ("sorted by cost", lambda: client.get(URL, {"o": "-7"})),
        ("page 50", lambda: client.get(URL, {"p": "50"})),
    ]
    print(f"{rows:,} rows in {settings.TOKENPAK_DB_LABEL} ({connection.vendor}); "
          f"median of {runs} runs after {WARMUP} warm-up runs")
    if export_rows.status_code == 200:
        context = cast(dict[str, Any], export_rows.context_data)  # a TemplateResponse's
        print(f"export rows: {context['cl'].result_count:,}")
    failed = 0
    for name, request in pages:
        times, response = timed(request, runs)
        with CaptureQueriesContext(connection) as queries:
            request()
        ok = response.status_code == 200
        failed += not ok
        print(f"{name:40} {statistics.median(times):8.1f} ms  (min {min(times):.1f}, "
              f"max {max(times):.1f}; {len(queries)} queries)"
              + ("" if ok else f"  FAILED: status {response.status_code}"))
    return 1 if failed else 0


if __name__ == "__main__":
    # The test client calls itself "testserver"; settings.py allows only loopback names.
    with override_settings(ALLOWED_HOSTS=[*settings.ALLOWED_HOSTS, "testserver"]):
        sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 7))
