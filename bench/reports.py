"""Report timings on a big ledger: `cost --month` and a full export.

    TOKENPAK_HOME=/tmp/tp-bench python bench/seed.py 1000000   # once, ~1 min
    TOKENPAK_HOME=/tmp/tp-bench python bench/reports.py

Prints the median of several runs of each command, called in-process (no interpreter start-up
in the figure), and exits non-zero only if a command fails.
"""

from __future__ import annotations

import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tokenpak_site.settings")

import django

django.setup()

from django.core.management import call_command  # noqa: E402

from telemetry.models import Event  # noqa: E402


def timed(args: list[str], runs: int) -> tuple[float, str]:
    times, out = [], ""
    for _ in range(runs):
        buf = io.StringIO()
        started = time.perf_counter()
        call_command(*args, stdout=buf)
        times.append(time.perf_counter() - started)
        out = buf.getvalue().strip().splitlines()[0]
    return statistics.median(times), out


def main() -> None:
    rows = Event.objects.count()
    print(f"ledger: {rows:,} rows")
    results = []
    for label, args, runs, target in [
        ("cost --month", ["cost", "--month"], 5, 1.0),
        ("cost --month --by-model", ["cost", "--month", "--by-model"], 5, 1.0),
        ("cost --month --by-day", ["cost", "--month", "--by-day"], 5, 1.0),
        ("status", ["status"], 3, None),
    ]:
        seconds, first = timed(args, runs)
        results.append((label, seconds, target, first))
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "all.csv")
        seconds, first = timed(["export", "--format", "csv", "--out", out], 1)
        results.append((f"export --format csv (all {rows:,} rows)", seconds, 10.0, first))
    print(f"{'command':<44} {'median s':>9} {'target s':>9}")
    for label, seconds, target, _ in results:
        print(f"{label:<44} {seconds:>9.3f} {target if target else '-':>9}")
    for label, _, _, first in results:
        print(f"  {label}: {first}")


if __name__ == "__main__":
    main()
