"""The record a request leaves: what the proxy fills in along a request's path and hands to the
ledger writer (telemetry.writer.record) when the request is done.

A leaf: it imports nothing of budgets/ or proxy/. The fields some of them fill in (compression's
outcome, the budgets' holds and leases) are typed here by what the writer and its listeners read
of them.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from telemetry.models import Status
from telemetry.usage import TokenUsage


def new_trace_id(now: float | None = None) -> str:
    """32 hex digits, time-ordered like UUIDv7: 48 bits of milliseconds, then 80 random bits.

    Rows are appended in time order, so their primary-key indexes grow at the end and joins
    over a period read neighbouring pages instead of a random sample of the whole index.
    """
    ms = int((time.time() if now is None else now) * 1000)
    return f"{ms:012x}{secrets.randbits(80):020x}"


class Savings(Protocol):
    """What compression saved on one request, in tokens (proxy.compression.Savings): read only."""

    @property
    def tokens_saved(self) -> int: ...
    @property
    def saved_prior(self) -> int: ...  # in messages the previous request already carried
    @property
    def saved_new(self) -> int: ...
    @property
    def new_after(self) -> int: ...  # tokens of the new messages' text as sent
    @property
    def segments(self) -> dict[str, tuple[int, int]]: ...  # kind → (raw, after)
    @property
    def estimated(self) -> bool: ...


class Compression(Protocol):
    """What compression did to one request (proxy.compression.Outcome), as the ledger and its
    captures read it."""

    @property
    def profile(self) -> str: ...
    @property
    def recipes(self) -> dict[str, int]: ...  # rule name → times it fired
    @property
    def stages(self) -> list[tuple[str, float]]: ...  # (stage, milliseconds)

    def savings(self, model: str) -> Savings: ...


@dataclass
class Record:
    """Everything the ledger keeps about one request; filled in along the request's path."""

    trace_id: str
    provider: str
    event_type: str
    endpoint: str
    ts: float
    agent_id: str = ""
    session_id: str = ""
    requested_model: str = ""
    sent_model: str = ""
    model: str = ""  # as the provider reported it
    stream: bool = False
    status: str = Status.OK
    error_class: str = ""
    upstream_status: int | None = None
    request_id: str = ""
    upstream: str = ""  # host:port the answer came from
    failover: str = ""  # upstreams that failed first, and why
    duration_ms: float = 0.0
    ttfb_ms: float | None = None
    usage: TokenUsage | None = None
    # For cut streams: counts what was seen, run by the writer, never on the request path.
    estimate: Callable[[], TokenUsage] | None = None
    request_body: str | None = None
    response_body: str | None = None
    # What compression did; the writer counts what it saved.
    compression: Compression | None = None
    # Set before forwarding only when the stats footer needs them; otherwise the writer counts.
    tokens_before: int = 0
    tokens_saved: int = 0
    # Budget holds were taken for this request: they go when its row lands (budgets.settlement).
    held: bool = False
    # Admitted on this process's budget leases instead: (lease hold id, amount) to settle.
    leases: list[tuple[int, int]] = field(default_factory=list)
    # For a debug capture (telemetry.captures): references to what the request path holds
    # anyway, copied only for a request the writer captures. `headers` are as forwarded,
    # credentials included: only captures.safe_headers() may turn them into anything stored.
    method: str = ""
    path: str = ""  # with the query string
    headers: list[tuple[str, str]] | None = None
    original_body: bytes = b""  # set only for requests worth capturing (billable, with a body)
    sent_body: bytes | None = None  # what went upstream after compression; None: nothing did
    route_note: str = ""  # what a budget did to it; empty: nothing
    answer: Callable[[], str] | None = None  # the answer's text, made only for a capture
    spool_seq: int = 0  # the spool file holding its `r` line; 0: none (telemetry.spool)
    # A decision still being made on another thread whose outcome the row depends on (a budget
    # check taking holds): the row is written once it is done (proxy/call.py).
    pending: asyncio.Future[Any] | None = None

    def finish(self, status: str, *, error_class: str = "") -> None:
        self.status = status
        if error_class:
            self.error_class = error_class[:64]
        self.duration_ms = (time.time() - self.ts) * 1000.0
