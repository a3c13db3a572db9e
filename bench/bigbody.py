"""What a big request costs everyone else: small-request latency while a ~30 MB one is compressed.

    .venv/bin/python bench/bigbody.py [--mb 30] [--kind char|lines|prose] [--messages N]
                                      [--small N]

Starts the fake provider (tests/fakeprovider.py) and the production server (uvicorn, as `serve`)
with a fresh SQLite ledger in a temporary TOKENPAK_HOME, then:

1. sends N small chat completions one after another on an idle server (the baseline);
2. sends one chat completion of --mb MB whose user messages (one, or --messages) are compressible
   text (one repeated character, repeated log lines, or repeated prose), and, from the moment
   its body is sent until its answer is back, small chat completions one after another.

Prints the small requests' p50 and max latency in both cases, the big request's time, and the
server's peak memory (VmHWM) over its level before the big request, once the ledger holds every
row (the writer counts the big request's tokens after its answer). Exits non-zero only on errors.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from bench.budget import manage  # noqa: E402
from tests.fakeprovider import FakeProvider  # noqa: E402
from tests.live import LiveServer, answers  # noqa: E402

HEADERS = {"authorization": "Bearer sk-bench-0000"}
SMALL = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello"}]}
TEXTS = {
    "char": "a",
    "lines": "2026-11-30 12:00:01 INFO worker processed item 12345 in 3 ms   \n",
    "prose": "The quick brown fox jumps over the lazy dog while the build reports warnings. \n",
}


def status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) // 1024
    raise SystemExit(f"no {field}")


def rows(home: Path) -> int:
    with sqlite3.connect(home / "monitor.db") as db:
        return db.execute("select count(*) from tp_events").fetchone()[0]


def small(client: httpx.Client, url: str) -> float:
    started = time.perf_counter()
    r = client.post(url + "/v1/chat/completions", json=SMALL, headers=HEADERS)
    if r.status_code != 200:
        raise SystemExit(f"small request failed: HTTP {r.status_code} {r.text[:200]}")
    return (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=30)
    parser.add_argument("--kind", choices=sorted(TEXTS), default="char")
    parser.add_argument("--small", type=int, default=50)
    parser.add_argument("--messages", type=int, default=1, help="split the text into N messages")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="tp-bench-bigbody-"))
    unit = TEXTS[args.kind]
    text = unit * (args.mb * 1024 * 1024 // len(unit) // args.messages)
    body = json.dumps({"model": "gpt-4o-mini", "messages": [
        {"role": "user", "content": f"{k}: {text}"} for k in range(args.messages)]}).encode()
    with FakeProvider() as fake:
        env = {"TOKENPAK_OPENAI_BASE_URL": fake.url, "TOKENPAK_LOG_ENABLED": "false",
               "TOKENPAK_RETENTION_DAYS": "0", "TOKENPAK_DB": str(home / "monitor.db"),
               "DATABASE_URL": ""}
        os.environ.pop("DATABASE_URL", None)
        manage({**os.environ, **env, "TOKENPAK_HOME": str(home),
                "DJANGO_SETTINGS_MODULE": "tokenpak_site.settings"}, "migrate", "--verbosity", "0")
        server = LiveServer(env, home).start()
        assert server.proc is not None
        try:
            deadline, tries = time.monotonic() + 20, 1
            while not answers(server.url) and time.monotonic() < deadline:
                time.sleep(0.05)
                tries += 1
            with httpx.Client(timeout=300) as client:
                idle = [small(client, server.url) for _ in range(args.small)]
                start_rss = status(server.proc.pid, "VmRSS")
                sent = threading.Event()
                big: dict[str, float] = {}

                def chunks():
                    for i in range(0, len(body), 1 << 20):
                        yield body[i:i + (1 << 20)]
                    sent.set()

                def send_big() -> None:
                    started = time.perf_counter()
                    r = httpx.post(server.url + "/v1/chat/completions", content=chunks(),
                                   headers={**HEADERS, "content-length": str(len(body))},
                                   timeout=600)
                    big["ms"] = (time.perf_counter() - started) * 1000
                    big["status"] = r.status_code

                thread = threading.Thread(target=send_big)
                thread.start()
                sent.wait()
                during = []
                while thread.is_alive():
                    during.append(small(client, server.url))
                thread.join()
            # The ledger writer counts the big request's tokens after the answer: wait for its row.
            written = tries + len(idle) + len(during) + 1  # each try of answers() is a request too
            deadline = time.monotonic() + 300
            while rows(home) < written and time.monotonic() < deadline:
                time.sleep(0.2)
            peak = status(server.proc.pid, "VmHWM")
        finally:
            server.stop()
    print(f"{args.mb} MB request ({args.kind}, {args.messages} messages): HTTP {big['status']}, "
          f"{big['ms']:.0f} ms; server peak {peak} MB ({peak - start_rss:+} MB over "
          f"{start_rss} MB)")
    print(f"small requests, idle:      n={len(idle)} p50 {statistics.median(idle):.1f} ms, "
          f"max {max(idle):.1f} ms")
    if during:
        print(f"small requests, during it: n={len(during)} p50 {statistics.median(during):.1f}"
              f" ms, max {max(during):.1f} ms")
    else:
        print("small requests, during it: none completed")


if __name__ == "__main__":
    main()
