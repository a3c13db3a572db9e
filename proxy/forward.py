"""One request's path: parse → forward upstream → relay the answer → hand the ledger a record.

Read top to bottom with proxy/api.py (routes) and proxy/providers/ (what differs per
provider). Nothing here waits on the database: the ledger writer takes the finished record.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache, partial
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, HttpResponseBase, StreamingHttpResponse

from budgets import guard
from budgets.guard import Verdict
from proxy import auth, compression, footer, intake, limits, paths, upstream
from proxy.providers.base import Provider, Route, StreamTap
from proxy.sse import EventSplitter
from telemetry.ledger import Record, new_trace_id, record
from telemetry.models import Status
from tokenpak_site.logs import redact_headers
from tokenpak_site.text import HEADER_FORBIDDEN

T = TypeVar("T")
log = logging.getLogger("tokenpak.requests")

# The CPU work on a body this big (parsing, compressing, re-encoding it) runs on a worker thread:
# on the event loop, a 30 MB body held every other request up for seconds. Smaller ones stay on
# the loop, where a few milliseconds of work cost less than the hop to a thread and back.
INLINE_BODY_BYTES = 256 * 1024
# Not the loop's default executor, which the footer's pricing and Django share. Under the GIL
# more threads would not be faster; a few keep a big body from queueing behind a bigger one.
_worker = ThreadPoolExecutor(max_workers=4, thread_name_prefix="tokenpak-body")
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))

# Never forwarded upstream: connection-level headers, what httpx sets itself, cookies for
# 127.0.0.1, the client's local addresses, and TokenPak's own X-TokenPak-* controls.
_DROP_REQUEST = frozenset(
    {
        "host",
        "content-length",
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "accept-encoding",
        "cookie",
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-real-ip",
    }
)
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


async def forward(request: HttpRequest, route: Route) -> HttpResponse:
    provider = route.provider
    # First, before even the size checks: a request without the token gets 401 in its provider's
    # shape (the SDKs raise AuthenticationError) and no row, whatever else is wrong with it, so
    # whoever can reach the port cannot write into the ledger (proxy/auth.py).
    if settings.REQUIRE_TOKEN and (message := auth.refusal(request)):
        return provider.error(401, message)
    rec = Record(
        trace_id=new_trace_id(),
        provider=provider.name,
        event_type=route.event_type,
        endpoint=request.path[:255],  # the column's width; the request line logs it too
        ts=time.time(),
    )
    if refused := limits.refusal(request.scope):  # type: ignore[attr-defined]
        return _refuse(rec, provider, *refused)
    if why := paths.refusal(request.scope):  # type: ignore[attr-defined]
        return _refuse(rec, provider, 400, f"Invalid URL ({request.method} {request.path[:200]}):"
                                           f" TokenPak does not forward this path: {why}.")
    headers = _upstream_headers(request, rec)

    try:
        body = await _read_body(request)
    except (RequestDataTooBig, intake.TooLarge):
        return _refuse(rec, provider, 413, intake.too_large_message())
    if route.billable and body:  # a debug capture may keep it: references, no copies
        rec.method, rec.path, rec.headers = request.method or "", request.get_full_path(), headers
        rec.original_body = body

    big = len(body) > INLINE_BODY_BYTES
    payload: Any = None
    # JSON-only endpoints read the body as JSON whatever a hand-written curl says it is (curl -d
    # sends application/x-www-form-urlencoded). A body that is not JSON gets 400, not 415: both
    # providers answer a body they cannot parse with 400 invalid_request_error, which their
    # SDKs raise as BadRequestError, and the same Content-Type with a JSON body is taken here,
    # so what is wrong is the body.
    if body and (route.json_body or _is_json(request)):
        payload, problem = await _work(rec, big, _parse, body, route.requires_model,
                                       _sent_as(request))
        if problem:
            return _refuse(rec, provider, 400, problem)
        rec.requested_model = rec.sent_model = provider.model_of(route, payload)
        rec.stream = provider.streams(route, payload)
    elif route.requires_model:
        return _refuse(rec, provider, 400, "Request body must be a JSON object with a model.")
    if settings.STORE_PROMPTS:
        rec.request_body = body.decode("utf-8", "replace")

    rewrite = False
    if route.compress and payload is not None:
        profile, problem = compression.parse_profile(
            request.headers.get("x-tokenpak-compress"), settings.COMPRESSION_PROFILE
        )
        if problem:
            return _refuse(rec, provider, 400, problem)
        outcome = await _work(rec, big, compression.compress, provider.name, payload, profile,
                              provider.compression_slots)
        rec.compression = outcome
        if outcome.changed:
            payload, rewrite = outcome.payload, True

    verdict = guard.WITHIN
    if route.billable:
        verdict = await guard.check(rec, payload, len(body), provider.output_limit(payload))
        rec.held = verdict.held
        if verdict.action:
            rec.route_note = _route_note(rec, verdict)
        if verdict.blocked:
            return _blocked(rec, provider, verdict)
        if verdict.route_to:
            route, payload = provider.with_model(route, payload, verdict.route_to)
            rec.sent_model = verdict.route_to
            rewrite = True
        if verdict.action:
            log.warning("%s over budget: %s; %s", rec.trace_id, verdict.decider.summary(),
                        f"routed {rec.requested_model} to {rec.sent_model}" if rewrite
                        else "forwarded")
    strip_usage = False
    if rec.stream:
        strip_usage = provider.ask_for_stream_usage(route, payload)
    if rewrite or strip_usage:
        body = await _work(rec, big, _encode, payload, big)

    query = "?" + request.META["QUERY_STRING"] if request.META.get("QUERY_STRING") else ""
    pool = upstream.upstream()
    # The footer's figures are final once the request is built. Pricing them may read the
    # database (off the event loop): a client that leaves meanwhile still gets a row.
    footer_text = ""
    try:
        if settings.STATS_FOOTER and route.stats_footer:
            if rec.compression is not None:  # the one case where savings are counted up front
                rec.tokens_saved, rec.tokens_before = await asyncio.to_thread(
                    rec.compression.footer_figures, rec.sent_model
                )
            footer_text = await footer.text_for(rec, provider.name)
    except asyncio.CancelledError:
        rec.finish(Status.CLIENT_CLOSED)
        record(rec)
        raise
    rec.sent_body = body
    # The provider, then its fallbacks: the next is tried after a connection error, a timeout
    # or a 5xx, all of them before a byte has gone to the client. The last one's answer,
    # whatever it is, is the client's.
    targets = [(provider.base_url, headers), *(
        (f.base_url, provider.with_key(headers, f.key) if f.key else headers)
        for f in provider.fallbacks)]
    failed: list[str] = []
    for n, (base, target_headers) in enumerate(targets, start=1):
        url = base + route.upstream_path + query
        rec.upstream = _netloc(base)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s -> %s %s headers=%s", rec.trace_id, request.method, url,
                      redact_headers(dict(target_headers)))
        last = n == len(targets)
        try:
            upstream_request = pool.client.build_request(
                request.method or "POST", url, headers=target_headers, content=body or None
            )
            response = await _in_time(pool.send(upstream_request), rec)
            if response.status_code >= 500 and not last:
                await response.aclose()
                failed.append(f"{rec.upstream}: http_{response.status_code}")
                continue
            rec.upstream_status = response.status_code
            rec.request_id = response.headers.get(provider.request_id_header, "")
            streaming = response.is_success and "text/event-stream" in response.headers.get(
                "content-type", ""
            )
            data = b"" if streaming else await _in_time(_read(response), rec)
        except httpx.HTTPError as e:
            if not last and not isinstance(e, TotalTimeout):  # no time left for another
                failed.append(f"{rec.upstream}: {type(e).__name__}")
                continue
            rec.failover = "; ".join(failed)
            if isinstance(e, httpx.TimeoutException):
                return _failed(rec, provider, 504, Status.UPSTREAM_TIMEOUT, e, url)
            return _failed(rec, provider, 502, Status.UPSTREAM_UNREACHABLE, e, url)
        except asyncio.CancelledError:
            rec.failover = "; ".join(failed)
            rec.finish(Status.CLIENT_CLOSED)
            record(rec)
            raise
        break
    if failed:
        rec.failover = "; ".join(failed)
        log.warning("%s failover: %s; answered by %s", rec.trace_id, rec.failover, rec.upstream)

    out_headers = _client_headers(response, rec, verdict)
    if streaming:
        tap = provider.tap(rec.sent_model, strip_usage, footer_text)
        stream = StreamingHttpResponse(
            _relay(response, tap, rec, provider, payload),
            status=response.status_code,
            headers=out_headers,
        )
        # The relay writes the row as the stream ends; one that never starts is ended here.
        return _on_start(stream, partial(_stream_unsent, response, tap, rec, provider, payload))

    answer = _loads(data) if "json" in response.headers.get("content-type", "") else None
    rec.answer = partial(provider.answer_text, data)  # the provider's words, before any footer
    if response.is_success:
        if route.billable:
            rec.usage = provider.usage_from_body(answer)
        if (model := provider.model_from_body(answer)) is not None:
            rec.model = model
        if footer_text and provider.add_footer(answer, footer_text):
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
    return _Answer(rec, data, status=response.status_code, headers=out_headers)


async def _relay(
    response: httpx.Response, tap: StreamTap, rec: Record, provider: Provider, payload: Any
) -> AsyncIterator[bytes]:
    """Forward whole events as they arrive; read usage on the side; always leave a row."""
    splitter = EventSplitter()
    stored: list[bytes] | None = [] if settings.STORE_PROMPTS else None
    status, error_class = Status.OK, ""
    try:
        # Raw bytes unless the provider compressed the stream: httpx's decoding layers cost
        # per chunk, and a stream is hundreds of chunks.
        chunks = (response.aiter_bytes() if "content-encoding" in response.headers
                  else response.aiter_raw())
        if settings.UPSTREAM_TOTAL_TIMEOUT:
            chunks = _timed(chunks, rec)
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
        await _end_stream(response, tap, rec, provider, payload, status, error_class, stored)


async def _end_stream(response: httpx.Response, tap: StreamTap, rec: Record, provider: Provider,
                      payload: Any, status: str, error_class: str,
                      stored: list[bytes] | None = None) -> None:
    await response.aclose()
    rec.model = tap.response_model
    if tap.needs_estimate:
        model = rec.sent_model
        rec.estimate = lambda: tap.estimate(lambda: provider.estimate_input(payload, model))
    else:
        rec.usage = tap.usage
    if stored is not None:
        rec.response_body = b"".join(stored).decode("utf-8", "replace")
    rec.answer = partial(provider.stream_answer_text, tap.seen)
    rec.finish(status, error_class=error_class)
    record(rec)


# proxy/handler.py awaits a proxied answer's `started` once it has tried to send the response
# start: with None when it went out, with the exception when it did not. A row written before
# that would say ok for a reply the client never got.
Started = Callable[[BaseException | None], Awaitable[None]]


def _on_start(response: HttpResponseBase, started: Started) -> HttpResponseBase:
    response.started = started  # type: ignore[attr-defined]
    return response


def _unsent(error: BaseException) -> str:
    return f"not_sent: {type(error).__name__}"[:64]


class _Answer(HttpResponse):
    """A provider's whole answer. Its row is written as its start goes out (before its body, so
    a kill -9 cannot lose the row of an answer the client has), saying so when it could not go
    out. Should Django's own handler ever serve a proxy route (it sends no `started`), the row
    is written when that handler closes the response."""

    def __init__(self, rec: Record, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rec: Record | None = rec

    async def started(self, error: BaseException | None) -> None:
        self._record(error)

    def close(self) -> None:
        super().close()
        self._record(None)

    def _record(self, error: BaseException | None) -> None:
        rec, self.rec = self.rec, None
        if rec is None:  # written already
            return
        if error is not None:
            rec.status, rec.error_class = Status.CLIENT_CLOSED, _unsent(error)
        record(rec)


async def _stream_unsent(response: httpx.Response, tap: StreamTap, rec: Record,
                         provider: Provider, payload: Any, error: BaseException | None) -> None:
    if error is not None:  # the relay never started: nothing else closes the stream or records
        await _end_stream(response, tap, rec, provider, payload, Status.CLIENT_CLOSED,
                          _unsent(error))


class TotalTimeout(httpx.TimeoutException):
    """providers.total_timeout ran out: handled like any upstream timeout, never failed over."""


async def _in_time(step: Awaitable[T], rec: Record) -> T:
    """step, within what is left of providers.total_timeout (no limit when it is 0)."""
    total = settings.UPSTREAM_TOTAL_TIMEOUT
    if not total:
        return await step
    try:
        return await asyncio.wait_for(step, max(0.0, rec.ts + total - time.time()))
    except TimeoutError:
        raise TotalTimeout(
            f"the request took longer than providers.total_timeout ({total:g} s)") from None


async def _timed(chunks: AsyncIterator[bytes], rec: Record) -> AsyncIterator[bytes]:
    it = aiter(chunks)
    while True:
        try:
            chunk = await _in_time(anext(it), rec)
        except StopAsyncIteration:
            return
        yield chunk


async def _read(response: httpx.Response) -> bytes:
    try:
        return await response.aread()
    finally:
        await response.aclose()


@lru_cache(maxsize=16)
def _netloc(base_url: str) -> str:
    return urlsplit(base_url).netloc


async def _read_body(request: HttpRequest) -> bytes:
    """Only now, after the checks that need no body: proxy/intake.py."""
    if isinstance(request, intake.ProxyRequest):
        return await request.read_body(settings.MAX_BODY_BYTES)
    return request.body  # a request Django's handler read (RequestDataTooBig past the limit)


def _upstream_headers(request: HttpRequest, rec: Record) -> list[tuple[str, str]]:
    headers: list[tuple[str, str]] = []
    for raw_name, raw_value in request.scope["headers"]:  # type: ignore[attr-defined]
        name = raw_name.decode("latin-1").lower()
        if name.startswith("x-tokenpak-"):
            value = raw_value.decode("latin-1").strip()
            if name == "x-tokenpak-agent":
                rec.agent_id = value
            elif name == "x-tokenpak-session":
                rec.session_id = value
        elif name not in _DROP_REQUEST:
            headers.append((name, raw_value.decode("latin-1")))
    return headers


def _route_note(rec: Record, verdict: Verdict) -> str:
    """What an exceeded budget did to the request, as a debug capture shows it."""
    over = f"over the {verdict.decider.summary()}" if verdict.decider else "over budget"
    if verdict.blocked:
        return f"blocked: {over}"
    if verdict.route_to:
        return f"routed {rec.requested_model} → {verdict.route_to}: {over}"
    return f"sent as requested: {over}"


def _client_headers(response: httpx.Response, rec: Record, verdict: Verdict) -> dict[str, str]:
    """The provider's headers the client may have, then TokenPak's own. The provider's as they
    came on the wire (latin-1 is byte for byte), never one named X-TokenPak-*: only TokenPak
    speaks for TokenPak."""
    headers: dict[str, str] = {}
    for raw_name, raw_value in response.headers.raw:
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


def _is_json(request: HttpRequest) -> bool:
    content_type = request.content_type or ""
    # SDKs always say application/json; curl users often say nothing at all.
    return content_type in ("", "application/json", "text/plain") or content_type.endswith("+json")


def _sent_as(request: HttpRequest) -> str:
    """What the body was declared as, when that may explain why it is not JSON."""
    declared = request.content_type or ""
    if not declared or declared == "application/json" or declared.endswith("+json"):
        return ""
    # The client's own words: shortened, like anything of a request's that may be logged.
    return f" This endpoint takes a JSON body; it was sent as {declared[:64]}."


async def _work(rec: Record, big: bool, fn: Callable[..., T], *args: Any) -> T:
    """fn(*args): inline for a small body, on the worker thread for a big one. A client that
    leaves meanwhile gets its row; the work runs to its end (a thread is not interrupted)."""
    if not big:
        return fn(*args)
    try:
        return await asyncio.get_running_loop().run_in_executor(_worker, partial(fn, *args))
    except asyncio.CancelledError:
        rec.finish(Status.CLIENT_CLOSED)
        record(rec)
        raise


def _encode(payload: Any, big: bool) -> bytes:
    # Compact, as the SDKs send it: whitespace between JSON tokens is bytes on the wire.
    if not big:
        return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    # json.dumps is one C call that holds the GIL throughout (0.1 to 0.5 s for 30 MB, the event
    # loop waiting); iterencode makes the same bytes piece by piece, letting it in between.
    return "".join(_ENCODER.iterencode(payload)).encode()


def _loads(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return None


def _parse(body: bytes, requires_model: bool, sent_as: str = "") -> tuple[dict, str]:
    try:
        payload = json.loads(body)
    except UnicodeDecodeError:
        return {}, "Request body is not valid UTF-8." + sent_as
    except ValueError as e:
        return {}, f"Request body is not valid JSON: {e}.{sent_as}"
    if not isinstance(payload, dict):
        return {}, "Request body must be a JSON object."
    model = payload.get("model")
    if requires_model and (not isinstance(model, str) or not model.strip()):
        return {}, "Missing required parameter: 'model'."
    return payload, ""


def _refuse(rec: Record, provider: Provider, status: int, message: str) -> HttpResponse:
    rec.finish(Status.INVALID_REQUEST, error_class=f"http_{status}")
    record(rec)
    response = provider.error(status, message)
    response["X-TokenPak-Trace-Id"] = rec.trace_id
    return response


def _blocked(rec: Record, provider: Provider, verdict: Verdict) -> HttpResponse:
    """429 in the provider's shape; the SDKs are told not to retry (it resets at a date)."""
    rec.finish(Status.BLOCKED, error_class="budget_exceeded")
    record(rec)
    decider = verdict.decider
    response = provider.error(429, decider.describe(), provider.quota_error)
    response["X-TokenPak-Trace-Id"] = rec.trace_id
    response["X-TokenPak-Budget"] = "exceeded"
    response["x-should-retry"] = "false"
    response["retry-after"] = str(max(1, math.ceil(decider.end.timestamp() - time.time())))
    return response


def _failed(
    rec: Record, provider: Provider, status: int, outcome: str, error: Exception, url: str
) -> HttpResponse:
    rec.finish(outcome, error_class=type(error).__name__)
    record(rec)
    where, why = f"{provider.name} upstream {httpx.URL(url).host}", type(error).__name__
    if isinstance(error, TotalTimeout):
        message = f"TokenPak: {error}."
    elif outcome == Status.UPSTREAM_TIMEOUT:
        message = f"TokenPak: {where} timed out ({why})."
    else:
        message = f"TokenPak: could not reach {where} ({why})."
    response = provider.error(status, message)
    response["X-TokenPak-Trace-Id"] = rec.trace_id
    return response
