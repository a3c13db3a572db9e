"""The spool's lines, and the rows made again from them when the database takes rows again.

The writer appends a request's facts as an `r` line before its response ends (no headers, no
prompt), and its finished rows as a `w` line when the database refuses them (telemetry.spool has
the file format). Replayed here: after an outage, and at start for a process that was killed.
A line no rows can be made of is set aside (spool.set_aside), never stopping the others.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connection

from telemetry import spool
from telemetry.models import Event
from telemetry.record import Record
from telemetry.rows import Entry, Rows, rows_of, storable
from telemetry.spool import Spool
from telemetry.usage import TokenUsage

writer_log = logging.getLogger("tokenpak.ledger")

Kept = tuple[bool, Rows]  # (held, rows): a `w` line, or rows kept in memory for one
SetAside = Callable[[dict[str, Any], Exception, Any], None]  # (what is kept, why, trace id)
Land = Callable[[list[list[Entry]]], int]  # commits parts of a batch; returns rows written

# A request's facts as its `r` line keeps them: no headers, no prompt (bodies only when
# store_prompts put them in the ledger anyway).
_FACTS = ("trace_id", "provider", "event_type", "endpoint", "ts", "agent_id", "session_id",
          "requested_model", "sent_model", "model", "stream", "status", "error_class",
          "upstream_status", "request_id", "upstream", "failover", "duration_ms", "ttfb_ms",
          "held")


def facts_line(r: Record) -> bytes:
    return json.dumps({"r": facts(r)}, separators=(",", ":")).encode() + b"\n"


def facts(r: Record) -> dict[str, Any]:
    found: dict[str, Any] = {k: getattr(r, k) for k in _FACTS}
    if r.usage is not None:
        found["usage"] = vars(r.usage)
    if r.compression is not None:
        found["compression"] = {"recipes": r.compression.recipes,
                                "stages": r.compression.stages}
    if r.request_body is not None:
        found["request_body"] = r.request_body
    if r.response_body is not None:
        found["response_body"] = r.response_body
    return found


def rows_line(held: bool, rows: Rows) -> bytes:
    # A NamedTuple is a JSON array: the `w` line every version wrote.
    return json.dumps({"w": rows, "held": held}, separators=(",", ":"),
                      default=str).encode() + b"\n"


@dataclass(frozen=True)
class _NoSavings:
    """What a row rebuilt from an `r` line saved: unknown without the prompt, so 0."""

    tokens_saved: int = 0
    saved_prior: int = 0
    saved_new: int = 0
    new_after: int = 0
    segments: dict[str, tuple[int, int]] = field(default_factory=dict)
    estimated: bool = False


@dataclass
class _Replayed:
    """What an `r` line says of compression: what fired and how long it took. What it saved
    needs the prompt, which the spool never holds: a row rebuilt from the line says 0."""

    recipes: dict[str, int]
    stages: list[tuple[str, float]]
    profile: str = ""

    def savings(self, model: str) -> _NoSavings:
        return _NoSavings()


def replayable(paths: list[Path], set_aside: SetAside) -> Iterator[Kept]:
    """(held, rows) for every request in these spool files: its `w` line when there is one,
    else rows rebuilt from its `r` line. A line no rows can be made of goes to `set_aside`
    (the line, why, its trace id), never stopping the others."""
    finished = {spool.trace_id(e) for e in spool.lines(paths) if "w" in e} - {None}
    for entry in spool.lines(paths):
        if "r" in entry and spool.trace_id(entry) in finished:
            continue
        if "r" not in entry and "w" not in entry:
            continue
        try:
            yield _replayed(entry)
        except Exception as e:  # an old version's line, a damaged one: this one only
            set_aside({"line": entry}, e, spool.trace_id(entry))


def _replayed(entry: dict[str, Any]) -> Kept:
    if "w" in entry:
        event, usage, cost, segments, hits = entry["w"]
        if not (isinstance(event.get("trace_id"), str) and event["trace_id"]):
            raise ValueError("the line names no trace id")
        event["created_at"] = datetime.fromtimestamp(float(event["ts"]), tz=UTC)
        cost["cost_usd"] = Decimal(str(cost["cost_usd"]))
        cost["cost_saved_usd"] = Decimal(str(cost["cost_saved_usd"]))
        return bool(entry.get("held")), Rows(event, usage, cost, list(segments), list(hits))
    found = dict(entry["r"])
    usage = found.pop("usage", None)
    compressed = found.pop("compression", None)
    r = Record(**found)
    if not (isinstance(r.trace_id, str) and r.trace_id):
        raise ValueError("the line names no trace id")
    r.usage = TokenUsage(**usage) if usage is not None else None
    if compressed is not None:
        r.compression = _Replayed(compressed["recipes"],
                                  [(stage, ms) for stage, ms in compressed["stages"]])
    return bool(r.held), rows_of(r)


def replay_files(paths: list[Path], land: Land, set_aside: SetAside) -> int:
    """Write the rows in these spool files, skipping any the database holds already. Raises
    UNAVAILABLE when it takes nothing; a line or a row it refuses is set aside."""
    written = 0
    chunk: list[Kept] = []
    for held, rows in replayable(paths, set_aside):
        chunk.append((held, rows))
        if len(chunk) >= settings.LEDGER_BATCH_SIZE:
            written += insert_new(chunk, land)
            chunk = []
    return written + insert_new(chunk, land)


def insert_new(kept: list[Kept], land: Land) -> int:
    """Insert the rows the database does not hold yet (a kill -9 can come after the commit
    and before the spool was emptied); their cost settles against the budgets as any row's
    does (the writer's batch hooks). Returns how many. Raises UNAVAILABLE when the database
    takes nothing."""
    if not kept:
        return 0
    fresh: dict[str, Entry] = {}
    for held, rows in kept:
        rows = storable(rows)
        event = rows.event
        fresh[event["trace_id"]] = Entry(rows, _settling(event, held))
    there = Event.objects.filter(trace_id__in=list(fresh)).values_list("trace_id", flat=True)
    for trace_id in there:
        del fresh[trace_id]
    return land([list(fresh.values())]) if fresh else 0


def _settling(event: dict[str, Any], held: bool) -> Record:
    """The little of a replayed row's request its listeners read: whose it was, whether it
    held budget, when; no body (nothing to capture), no lease (this process's are gone)."""
    return Record(trace_id=event["trace_id"], provider=event.get("provider") or "",
                  event_type=event.get("event_type") or "", endpoint=event.get("endpoint") or "",
                  ts=event.get("ts") or 0.0, agent_id=event["agent_id"], held=held)


def stopped_processes(own: Spool, replay: Callable[[list[Path]], int]) -> None:
    """Rows a killed process left in the spool, written by `replay` (the writer's): before
    any new ones."""
    directory = own.directory
    for owner in spool.owners(directory, me=own.name):
        if owner.alive:
            continue
        fd = spool.claim(directory, owner.name)
        if fd is None:
            continue
        try:
            written = replay(owner.files)
        except Exception as e:  # UNAVAILABLE, or a bug: the files stay for the next start
            connection.close()
            os.close(fd)
            writer_log.error("ledger: the rows a stopped process left in the spool could "
                             "not be written (%s); the next start tries again", e)
            continue
        spool.release(directory, owner.name, fd)
        if written:
            writer_log.warning("ledger: wrote %d rows a stopped process (%s) left in the "
                               "spool", written, owner.name)
