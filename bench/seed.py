"""Fill a ledger with N synthetic rows, fast, for the 1M-row benchmarks.

    TOKENPAK_HOME=/tmp/tp-bench python bench/seed.py 1000000
    TOKENPAK_HOME=/tmp/tp-many python bench/seed.py 100000 100000   # 100,000 distinct agents

Rows span the last 120 days in time order (as the ledger writer appends them) over a handful of
models, agents and statuses, with usage, cost and recipe-hit rows as the proxy writes them.
Inserts go through executemany in large transactions.
"""

from __future__ import annotations

import os
import random
import sys
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tokenpak_site.settings")

import django

django.setup()

from django.core.management import call_command  # noqa: E402
from django.db import connection, transaction  # noqa: E402

from telemetry.models import NANO  # noqa: E402
from telemetry.record import new_trace_id  # noqa: E402

MODELS = [("openai", "gpt-4o-mini"), ("openai", "gpt-4o"), ("openai", "gpt-5.1"),
          ("anthropic", "claude-sonnet-4-6"), ("anthropic", "claude-haiku-4-5"),
          ("anthropic", "claude-opus-4-7")]
AGENTS = ["", "coder", "reviewer", "planner", "ci"]
RECIPES = ["json-minify", "blank-lines", "ansi-colours", "seen-lines", "long-output"]
STATUSES = ["ok"] * 95 + ["error"] * 3 + ["stream_cut", "client_closed"]


def seed(n: int, days: int = 120, chunk: int = 20_000, agents: int = 0) -> None:
    """agents: that many distinct X-TokenPak-Agent values, one after another (0: AGENTS)."""
    call_command("migrate", verbosity=0)
    rng = random.Random(42)
    now = time.time()
    started = time.monotonic()
    qn = connection.ops.quote_name
    ev_cols = ["trace_id", "request_id", "event_type", "ts", "created_at", "provider", "model",
               "agent_id", "duration_ms", "status", "error_class", "session_id", "endpoint",
               "requested_model", "sent_model", "stream", "upstream_status", "ttfb_ms",
               "usage_source", "input_tokens", "output_tokens", "tokens_saved", "cost_nano_usd",
               "saved_nano_usd", "compress_ms", "upstream", "failover"]
    us_cols = ["trace_id", "input_tokens", "output_tokens", "tokens_saved", "savings_pct",
               "cache_hit", "cache_read_tokens", "cache_write_tokens", "cache_write_1h_tokens",
               "reasoning_tokens", "estimated", "saved_estimated"]
    co_cols = ["trace_id", "cost_usd", "cost_saved_usd", "pricing_source", "priced_as"]
    hit_cols = ["trace_id", "recipe", "hits"]

    def insert(table: str, cols: list[str], rows: list[tuple]) -> None:
        marks = ", ".join(["%s"] * len(cols))
        sql = f"INSERT INTO {qn(table)} ({', '.join(map(qn, cols))}) VALUES ({marks})"
        with connection.cursor() as cursor:
            cursor.executemany(sql, rows)

    start, step = now - days * 86400, days * 86400 / n
    done = 0
    while done < n:
        size = min(chunk, n - done)
        events: list[tuple] = []
        usage, costs, hits = [], [], []
        for _ in range(size):
            # In time order, as the ledger writer appends them, with a little jitter.
            ts = start + (done + len(events) + rng.random()) * step
            trace = new_trace_id(ts)
            provider, model = rng.choice(MODELS)
            status = rng.choice(STATUSES)
            stream = rng.random() < 0.6
            inp, out = rng.randint(200, 20000), rng.randint(10, 2000)
            compressed = rng.random() < 0.7  # the rest are not conversations compression reads
            saved = rng.randint(0, inp // 3) if compressed and rng.random() < 0.4 else 0
            cached = rng.randint(0, inp // 2) if rng.random() < 0.4 else 0
            cost = inp * 3000 + out * 15000  # nano-USD at $3 / $15 per MTok
            saved_cost = saved * 3000
            events.append((trace, f"req_{trace[:12]}", "chat.completions" if provider == "openai"
                           else "messages", ts, datetime.fromtimestamp(ts, tz=UTC), provider,
                           model, f"agent-{(done + len(events)) % agents}" if agents
                           else rng.choice(AGENTS), round(rng.uniform(200, 9000), 3), status,
                           "" if status == "ok" else "rate_limit_error", "", "/v1/x", model,
                           model, stream, 200 if status == "ok" else 429,
                           round(rng.uniform(50, 800), 3), "provider", inp, out, saved, cost,
                           saved_cost, round(rng.uniform(0.2, 8), 3) if compressed else None,
                           f"api.{provider}.com:443", ""))
            if saved:
                hits += [(trace, recipe, rng.randint(1, 5))
                         for recipe in rng.sample(RECIPES, rng.randint(1, 2))]
            usage.append((trace, inp, out, saved, 100.0 * saved / (inp + saved) if saved else 0.0,
                          cached > 0, cached, 0, 0, 0, False, False))
            costs.append((trace, str(Decimal(cost) / NANO), str(Decimal(saved_cost) / NANO),
                          "catalog", model))
        with transaction.atomic():
            insert("tp_events", ev_cols, events)
            insert("tp_usage", us_cols, usage)
            insert("tp_costs", co_cols, costs)
            insert("tp_recipe_hits", hit_cols, hits)
        done += size
        rate = done / (time.monotonic() - started)
        print(f"\rseeded {done:,}/{n:,} rows ({rate:,.0f} rows/s)", end="", file=sys.stderr)
    print(file=sys.stderr)
    if connection.vendor == "sqlite":
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")


if __name__ == "__main__":
    seed(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000,
         agents=int(sys.argv[2]) if len(sys.argv) > 2 else 0)
