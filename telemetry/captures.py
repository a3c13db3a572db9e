"""Debug captures: `debug on --requests N` keeps the next N requests whole.

The request path decides nothing: it leaves references to what it holds anyway (bodies,
forwarded headers, the answer) on its `Record`, and the ledger writer, inside the transaction
that writes the batch's rows, takes what the switch still allows and turns it into tp_captures
rows. With the switch off, a batch costs one primary-key read, and only when it holds a
request that could be captured.

Captured: billable requests that carried a body (chat completions, messages, responses,
embeddings, …), whatever became of them (refused, blocked and failed requests are what
one debugs); model lists and count_tokens are not worth a slot. Credentials never: see
`safe_headers` and `safe_path`, which leave out what the log masks (tokenpak_site/logs.py
`is_secret`, the one rule for both).
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from django.db import DatabaseError, connection, transaction
from django.db.models import F

from telemetry.models import Capture, DebugSwitch, Status
from telemetry.record import Record
from tokenpak_site.logs import is_secret
from tokenpak_site.text import storable

log = logging.getLogger("tokenpak.ledger")

# Re-made on every request by the HTTP client; a replay must not carry the original's.
_NOT_REPLAYED = frozenset({"content-length", "host", "transfer-encoding"})

_REMAINING = "SELECT remaining FROM tp_debug WHERE id = 1"


def safe_headers(headers: list[tuple[str, str]] | None) -> list[list[str]]:
    """The headers worth keeping for a replay, every credential left out."""
    return [
        [name, value]
        for name, value in headers or []
        if name not in _NOT_REPLAYED and not is_secret(name, value)
    ]


def safe_path(path: str) -> str:
    """The path with any query parameter that could carry a credential left out."""
    parts = urlsplit(path)
    if not parts.query:
        return path
    kept = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
            if not is_secret(k, v)]
    return parts.path + (f"?{urlencode(kept)}" if kept else "")


def take(records: list[Record]) -> int:
    """Inside the writer's transaction, after the batch's events exist: capture as many of
    the batch's requests as the switch still allows, and take them from it. Returns how many.

    A capture that cannot be written is logged and skipped: the ledger rows stay.
    """
    wanted = [r for r in records if r.original_body]
    if not wanted:
        return 0
    with connection.cursor() as cursor:  # plain SQL: this runs for every batch
        cursor.execute(_REMAINING)
        row = cursor.fetchone()
    if row is None or row[0] <= 0:
        return 0
    try:
        with transaction.atomic():  # a savepoint, so a failure here rolls back only this
            # Locked and read again: another process's writer may have taken the last slots.
            switch = DebugSwitch.objects.select_for_update().filter(pk=1).first()
            if switch is None or switch.remaining <= 0:
                return 0
            picked = wanted[: switch.remaining]
            Capture.objects.bulk_create([capture(r) for r in picked])
            DebugSwitch.objects.filter(pk=1).update(remaining=F("remaining") - len(picked))
    except (DatabaseError, ValueError) as e:  # ValueError: a value no driver can encode
        log.error("debug capture of %d requests failed, ledger rows kept: %s", len(wanted), e)
        return 0
    return len(picked)


def capture(r: Record) -> Capture:
    stages: list[Any] = []
    recipes: dict[str, int] = {}
    profile = ""
    if r.compression is not None:
        profile = r.compression.profile
        stages = [[stage, round(ms, 3)] for stage, ms in r.compression.stages]
        recipes = dict(r.compression.recipes)
    answer = ""
    if r.answer is not None:
        try:
            answer = r.answer()
        except Exception:  # a capture must never cost the row
            log.exception("the answer of %s could not be read for its capture", r.trace_id)
    return Capture(
        trace_id=r.trace_id,
        method=(r.method or "POST")[:8],
        path=safe_path(r.path or r.endpoint)[:1024],
        headers=safe_headers(r.headers),
        original_body=_text(r.original_body),
        sent_body=None if r.sent_body is None else _text(r.sent_body),
        profile=profile[:16],
        stages=stages,
        recipes=recipes,
        route_note=(r.route_note or _default_route_note(r))[:512],
        response_text=_text(answer),
    )


def _default_route_note(r: Record) -> str:
    if r.sent_body is None:
        return "refused by TokenPak, not sent" if r.status == Status.INVALID_REQUEST else "not sent"
    return "sent as requested"


def _text(value: bytes | str) -> str:
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    # PostgreSQL text cannot hold NUL, no driver a lone surrogate (an answer's "\udc80").
    return storable(text)
