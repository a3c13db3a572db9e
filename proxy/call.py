"""One request's context: what the stages of proxy/forward.py read and fill in, and its ledger row.

The row is finished and handed to the ledger here and nowhere else, exactly once, whichever way
the request ends: refused, blocked, failed upstream, answered, relayed, cut, or left by its client.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from django.http import HttpRequest, HttpResponse

from budgets.admission import WITHIN, Verdict
from proxy.compression import Outcome
from proxy.providers.base import Provider, Route
from telemetry.models import Status
from telemetry.record import Record, new_trace_id
from telemetry.writer import record


@dataclass
class Call:
    request: HttpRequest
    route: Route
    rec: Record
    headers: list[tuple[str, str]] = field(default_factory=list)  # as forwarded upstream
    body: bytes = b""
    payload: Any = None  # the body as JSON, when it is JSON
    big: bool = False  # CPU work on the body runs on a worker thread (proxy/forward.py)
    rewrite: bool = False  # payload changed: it is encoded anew before sending
    strip_usage: bool = False  # TokenPak asked for stream usage the client did not
    verdict: Verdict = WITHIN
    compressed: Outcome | None = None  # what the compression step did (also rec.compression)
    footer_text: str = ""
    failed: list[str] = field(default_factory=list)  # upstreams that failed before the answer
    # The upstream's answer (proxy/forward.py send()): its body, unless it is a stream.
    response: httpx.Response | None = None
    streaming: bool = False
    data: bytes = b""
    written: bool = False

    @classmethod
    def begin(cls, request: HttpRequest, route: Route) -> Call:
        return cls(request, route, Record(
            trace_id=new_trace_id(),
            provider=route.provider.name,
            event_type=route.event_type,
            endpoint=request.path[:255],  # the column's width; the request line logs it too
            ts=time.time(),
        ))

    @property
    def provider(self) -> Provider:
        return self.route.provider

    def end(self, status: str, error_class: str = "") -> None:
        """Finish the row and write it; nothing once it was written."""
        if not self.written:
            self.rec.finish(status, error_class=error_class)
            self.write()

    def write(self) -> None:
        """Hand the row to the ledger, once. A budget check still deciding on its thread holds
        it back until then: the writer drops a row's holds, which must exist first."""
        if self.written:
            return
        self.written = True
        pending = self.rec.pending
        if pending is not None and not pending.done():
            pending.add_done_callback(lambda _: record(self.rec))
        else:
            record(self.rec)

    def error(self, status: int, message: str, outcome: str = Status.INVALID_REQUEST,
              error_class: str = "", error_type: str = "") -> HttpResponse:
        """TokenPak answers instead of the provider, in the provider's shape."""
        self.end(outcome, error_class or f"http_{status}")
        response = self.provider.error(status, message, error_type)
        response["X-TokenPak-Trace-Id"] = self.rec.trace_id
        return response

    def blocked(self) -> HttpResponse:
        """429 in the provider's shape; the SDKs are told not to retry (it resets at a date)."""
        decider = self.verdict.decider
        assert decider is not None
        response = self.error(429, decider.describe(), Status.BLOCKED, "budget_exceeded",
                              self.provider.quota_error)
        response["X-TokenPak-Budget"] = "exceeded"
        response["x-should-retry"] = "false"
        response["retry-after"] = str(max(1, math.ceil(decider.end.timestamp() - time.time())))
        return response
