"""The last stage: the provider's answer to the client, whole (JSON) or as it streams.

Either way the answer's row is written once the client has it, or once it is known the client
will not: proxy/handler.py awaits a proxied answer's `started` after it tried to send the
response start. A row written before that would say ok for a reply the client never got.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import httpx
from django.conf import settings
from django.http import HttpResponse, HttpResponseBase, StreamingHttpResponse

from proxy import footer
from proxy.call import Call
from proxy.providers.base import StreamTap
from proxy.sse import EventSplitter
from proxy.upstream import TotalTimeout, timed
from telemetry.models import Status
from tokenpak_site.text import HEADER_FORBIDDEN

# Never passed back: connection-level headers, and what no longer holds after httpx decoded
# the body (encoding, length) or does not apply to 127.0.0.1 (cookies).
_DROP_RESPONSE = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-encoding",
        "content-length",
        "set-cookie",
        "date",
        "server",
    }
)
# A provider's header is dropped when no server could send it on (uvicorn raises on it and the
# client would get an empty reply): C0 controls but HTAB, and DEL. And when it is over-long:
# the SDKs' HTTP parser (h11) refuses an answer whose head is over 16 KB in all.
_UNSENDABLE = re.compile(HEADER_FORBIDDEN)
MAX_HEADER_VALUE = 8 * 1024

def respond(call: Call) -> HttpResponseBase:
    """The client's response to the provider's answer (call.response)."""
    response = call.response
    assert response is not None
    headers = _client_headers(call)
    if call.streaming:
        tap = call.provider.tap(call.rec.sent_model, call.strip_usage, call.footer_text)
        stream = StreamingHttpResponse(_relay(call, tap), status=response.status_code,
                                       headers=headers)
        # The relay writes the row as the stream ends; one that never starts is ended here.
        # An attribute of our own that proxy/handler.py looks for: not one Django declares.
        stream.started = partial(_stream_unsent, call, tap)  # type: ignore[attr-defined]
        return stream
    return _whole(call, headers)


def _whole(call: Call, headers: dict[str, str]) -> HttpResponse:
    response, rec, provider, data = call.response, call.rec, call.provider, call.data
    assert response is not None
    answer = _loads(data) if "json" in response.headers.get("content-type", "") else None
    rec.answer = partial(provider.answer_text, data)  # the provider's words, before any footer
    if response.is_success:
        if call.route.billable:
            rec.usage = provider.usage_from_body(answer)
        if (model := provider.model_from_body(answer)) is not None:
            rec.model = model
        if call.footer_text and provider.add_footer(answer, call.footer_text):
            data = footer.dumps(answer)
        rec.finish(Status.OK)
    else:
        rec.finish(
            Status.ERROR,
            error_class=provider.error_class_from_body(answer) or f"http_{response.status_code}",
        )
    rec.ttfb_ms = rec.duration_ms
    if settings.STORE_PROMPTS:
        rec.response_body = data.decode("utf-8", "replace")
    return _Answer(call, data, status=response.status_code, headers=headers)


class _Answer(HttpResponse):
    """A provider's whole answer. Its row is written as its start goes out (before its body, so
    a kill -9 cannot lose the row of an answer the client has), saying so when it could not go
    out. Should Django's own handler ever serve a proxy route (it sends no `started`), the row
    is written when that handler closes the response."""

    def __init__(self, call: Call, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.call = call

    async def started(self, error: BaseException | None) -> None:
        if error is not None and not self.call.written:
            self.call.rec.status, self.call.rec.error_class = Status.CLIENT_CLOSED, _unsent(error)
        self.call.write()

    def close(self) -> None:
        super().close()
        self.call.write()


def _unsent(error: BaseException) -> str:
    return f"not_sent: {type(error).__name__}"[:64]


async def _relay(call: Call, tap: StreamTap) -> AsyncIterator[bytes]:
    """Forward whole events as they arrive; read usage on the side; always leave a row."""
    response, rec, provider = call.response, call.rec, call.provider
    assert response is not None
    splitter = EventSplitter()
    stored: list[bytes] | None = [] if settings.STORE_PROMPTS else None
    status, error_class = Status.OK, ""
    try:
        # Raw bytes unless the provider compressed the stream: httpx's decoding layers cost
        # per chunk, and a stream is hundreds of chunks.
        chunks = (response.aiter_bytes() if "content-encoding" in response.headers
                  else response.aiter_raw())
        if settings.UPSTREAM_TOTAL_TIMEOUT:
            chunks = timed(chunks, rec.ts)
        async for chunk in chunks:
            out = b"".join([tap.event(event) for event in splitter.feed(chunk)])
            if out:
                if rec.ttfb_ms is None:
                    rec.ttfb_ms = (time.time() - rec.ts) * 1000.0
                if stored is not None:
                    stored.append(out)
                yield out
        if held := tap.flush():  # the stream stopped right after an event the footer held back
            yield held
        if tap.error_class:
            status, error_class = Status.ERROR, tap.error_class
        elif not tap.complete:
            status, error_class = Status.STREAM_CUT, "incomplete_stream"
            yield provider.cut_event("TokenPak: the provider ended the stream before it finished.")
    except (asyncio.CancelledError, GeneratorExit):  # GeneratorExit: closed while at a yield
        # A client may hang up as soon as it has the last event (the SDKs raise on an error
        # event, or on TokenPak's own cut event, and close): the row says what the answer was.
        # client_closed is for a client that left before the answer ended.
        if tap.error_class:
            status, error_class = Status.ERROR, tap.error_class
        elif not tap.complete and status == Status.OK:
            status = Status.CLIENT_CLOSED
        raise
    except httpx.TimeoutException as e:
        status, error_class = Status.UPSTREAM_TIMEOUT, type(e).__name__
        yield tap.flush() + provider.cut_event(
            f"TokenPak: {e}." if isinstance(e, TotalTimeout)
            else "TokenPak: the provider stopped sending (read timeout)."
        )
    except httpx.HTTPError as e:
        status, error_class = Status.STREAM_CUT, type(e).__name__
        yield tap.flush() + provider.cut_event(
            "TokenPak: the connection to the provider was lost mid-stream."
        )
    finally:
        await _end_stream(call, tap, status, error_class, stored)


async def _end_stream(call: Call, tap: StreamTap, status: str, error_class: str,
                      stored: list[bytes] | None = None) -> None:
    assert call.response is not None
    await call.response.aclose()
    rec, provider, payload = call.rec, call.provider, call.payload
    rec.model = tap.response_model
    if tap.needs_estimate:
        model = rec.sent_model
        rec.estimate = lambda: tap.estimate(lambda: provider.estimate_input(payload, model))
    else:
        rec.usage = tap.usage
    if stored is not None:
        rec.response_body = b"".join(stored).decode("utf-8", "replace")
    rec.answer = partial(provider.stream_answer_text, tap.seen)
    call.end(status, error_class)


async def _stream_unsent(call: Call, tap: StreamTap, error: BaseException | None) -> None:
    if error is not None:  # the relay never started: nothing else closes the stream or records
        await _end_stream(call, tap, Status.CLIENT_CLOSED, _unsent(error))


def _client_headers(call: Call) -> dict[str, str]:
    """The provider's headers the client may have, then TokenPak's own. The provider's as they
    came on the wire (latin-1 is byte for byte), never one named X-TokenPak-*: only TokenPak
    speaks for TokenPak."""
    assert call.response is not None
    rec, verdict = call.rec, call.verdict
    headers: dict[str, str] = {}
    for raw_name, raw_value in call.response.headers.raw:
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        if name in _DROP_RESPONSE or name.startswith("x-tokenpak-") or not _sendable(value):
            continue
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    headers["X-TokenPak-Trace-Id"] = rec.trace_id
    if verdict.header():
        headers["X-TokenPak-Budget"] = verdict.header()
    if verdict.route_to and _sendable(rec.requested_model):  # the client's own model name
        headers["X-TokenPak-Routed-From"] = rec.requested_model
    return headers


def _sendable(value: str) -> bool:
    return len(value) <= MAX_HEADER_VALUE and (value.isprintable() or not _UNSENDABLE.search(value))


def _loads(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return None
