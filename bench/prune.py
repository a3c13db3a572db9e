"""Time `manage.py prune` over a 1M-row ledger (target: under 20 s).

    .venv/bin/python bench/prune.py [--chunk N]

Prune destroys data, so it runs on a copy: /tmp/tp-bench/monitor.db (seeded by bench/seed.py,
seeded here first when missing) is copied to /tmp/tp-bench-prune, and `prune --older-than 1d`
deletes essentially all of it (the seed spans 120 days). Prints rows deleted, seconds, rows/s
and peak memory; exits non-zero only on errors.

Peak RSS (getrusage) counts the pages of the database file that SQLite maps (settings set
mmap_size): they are the OS page cache, not memory prune holds. Peak anonymous RSS (sampled)
is what prune itself allocates, and should stay flat whatever the ledger size.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = Path("/tmp/tp-bench")
SCRATCH = Path("/tmp/tp-bench-prune")
ROWS = 1_000_000


def prepare() -> None:
    db = SOURCE / "monitor.db"
    if not db.exists():
        print(f"{db} is missing: seeding {ROWS:,} rows (about 2 min)", file=sys.stderr)
        subprocess.run(
            [sys.executable, str(ROOT / "bench" / "seed.py"), str(ROWS)],
            env={**os.environ, "TOKENPAK_HOME": str(SOURCE), "DATABASE_URL": ""},
            check=True,
        )
    SCRATCH.mkdir(mode=0o700, exist_ok=True)
    for suffix in ("", "-wal", "-shm"):
        (SCRATCH / f"monitor.db{suffix}").unlink(missing_ok=True)
        # The WAL too, when there is one: it may hold rows not yet in the main file.
        if (SOURCE / f"monitor.db{suffix}").exists() and suffix != "-shm":
            shutil.copyfile(SOURCE / f"monitor.db{suffix}", SCRATCH / f"monitor.db{suffix}")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def anon_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    return 0.0


class AnonPeak(threading.Thread):
    """Samples anonymous RSS (no peak counter exists for it) every 20 ms."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = anon_rss_mb()
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.02):
            self.peak = max(self.peak, anon_rss_mb())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunk", type=int, default=10_000, help="prune --chunk")
    chunk = parser.parse_args().chunk
    prepare()
    # The scratch copy and nothing else: never a DATABASE_URL or TOKENPAK_DB from the shell.
    os.environ["TOKENPAK_HOME"] = str(SCRATCH)
    os.environ.pop("DATABASE_URL", None)
    os.environ.pop("TOKENPAK_DB", None)
    os.environ["DJANGO_SETTINGS_MODULE"] = "tokenpak_site.settings"
    sys.path.insert(0, str(ROOT))

    import django

    django.setup()
    from django.core.management import call_command

    from telemetry.models import Cost, Event, Segment, Usage

    before = Event.objects.count()
    anon_before = anon_rss_mb()
    sampler = AnonPeak()
    sampler.start()
    started = time.perf_counter()
    call_command("prune", older_than="1d", chunk=chunk, stdout=sys.stdout, stderr=sys.stderr)
    seconds = time.perf_counter() - started
    sampler.done.set()
    sampler.join()
    peak_rss = peak_rss_mb()
    left = Event.objects.count()
    deleted = before - left

    orphans = sum(
        model.objects.exclude(trace_id__in=Event.objects.values("trace_id")).count()
        for model in (Usage, Cost, Segment)
    )
    print(
        f"prune bench (chunk {chunk:,}): {deleted:,} of {before:,} requests deleted in "
        f"{seconds:.1f} s ({deleted / seconds:,.0f} rows/s), {left:,} left; "
        f"peak RSS {peak_rss:.0f} MB (mapped database pages included), "
        f"anonymous RSS {anon_before:.0f} MB before, {sampler.peak:.0f} MB peak; "
        f"orphaned child rows: {orphans}"
    )
    return 1 if orphans else 0


if __name__ == "__main__":
    sys.exit(main())
