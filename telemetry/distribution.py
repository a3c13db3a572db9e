"""Distributions of a column (latency, time to first byte, compression time) without reading
its rows: a histogram the database builds with buckets 1 % wide on a log scale (one GROUP BY, on
SQLite and PostgreSQL alike). Percentiles are read at each bucket's geometric middle and kept
inside the smallest and largest value the bucket really holds: within 0.5 % of the exact value
plus 0.01 ms, at the cost of one scan whatever the ledger's size.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from django.db.models import Count, Func, IntegerField, Max, Min, QuerySet

from telemetry.models import Event

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper
    from django.db.models.sql.compiler import SQLCompiler


class LogBucket(Func):
    """value → its bucket on a log scale, STEPS buckets per factor e (about 1 % wide)."""

    STEPS = 100
    output_field = IntegerField()

    def as_sql(  # type: ignore[override]  # writes its SQL: none of Func's template args
        self, compiler: SQLCompiler, connection: BaseDatabaseWrapper, **extra: Any
    ) -> tuple[str, Any]:
        sql, params = compiler.compile(self.source_expressions[0])
        if connection.vendor == "sqlite":  # values are never negative: truncation is floor
            return f"CAST(ln(({sql}) + 1.0) * {self.STEPS} AS INTEGER)", params
        return f"CAST(FLOOR(ln(({sql}) + 1.0) * {self.STEPS}) AS INTEGER)", params


class Bucket(NamedTuple):
    b: int
    n: int
    lo: float  # the bucket's smallest and largest value: a percentile never leaves them
    hi: float


def distribution(qs: QuerySet[Event], column: str) -> list[Bucket]:
    """The column's log buckets in order, NULLs left out."""
    rows = (qs.filter(**{f"{column}__isnull": False}).order_by()
            .annotate(b=LogBucket(column)).values("b")
            .annotate(n=Count("*"), lo=Min(column), hi=Max(column)))
    return sorted(Bucket(r["b"], r["n"], r["lo"], r["hi"]) for r in rows)


def bucket_value(b: int) -> float:
    return math.exp((b + 0.5) / LogBucket.STEPS) - 1.0


def percentiles(dist: list[Bucket], ps: Iterable[int] = (50, 95, 99)
                ) -> dict[int, float | None]:
    total = sum(x.n for x in dist)
    result: dict[int, float | None] = {}
    for p in ps:
        if not total:
            result[p] = None
            continue
        rank, seen = math.ceil(total * p / 100), 0
        for x in dist:
            seen += x.n
            if seen >= rank:
                result[p] = round(min(max(bucket_value(x.b), x.lo), x.hi), 2)
                break
    return result


def bins(dist: list[Bucket], edges: Sequence[float], unit: str) -> list[dict[str, Any]]:
    """Fine buckets folded into readable ranges (by each bucket's middle); empty when no rows."""
    if not dist:
        return []
    counts = [0] * (len(edges) + 1)
    for x in dist:
        v = bucket_value(x.b)
        counts[next((i for i, e in enumerate(edges) if v < e), len(edges))] += x.n
    return [{"range": name, "requests": n} for name, n in zip(range_names(edges, unit), counts,
                                                              strict=True)]


def range_names(edges: Sequence[float], unit: str) -> list[str]:
    def say(v: float) -> str:
        if unit == "ms" and v >= 1000:
            return f"{v / 1000:g} s"
        return f"{v:g} {unit}" if unit == "ms" else f"{v:g}{unit}"

    names = [f"< {say(edges[0])}"]
    names += [f"{say(a)} – {say(b)}" for a, b in itertools.pairwise(edges)]
    return [*names, f"≥ {say(edges[-1])}"]
