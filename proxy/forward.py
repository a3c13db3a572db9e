"""One request's path, in stages around one context (proxy/call.py):

    parse → admit → prepare → send (with failover) → respond JSON | relay stream

Read with proxy/api.py (routes), proxy/providers (what differs per provider), proxy/admission.py
(the steps before sending) and proxy/relay.py (the answer). Nothing here waits on the database:
the ledger writer takes the finished record.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from functools import lru_cache
from typing import Any, cast
from urllib.parse import urlsplit

import httpx
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpRequest, HttpResponse, HttpResponseBase

from proxy import auth, clients, footer, intake, limits, paths, relay, upstream
from proxy.admission import admit
from proxy.call import Call
from proxy.providers.base import Route
from proxy.upstream import TotalTimeout, in_time
from proxy.work import INLINE_BODY_BYTES, encode, on_worker
from telemetry.models import Status
from telemetry.record import Record
from tokenpak_site.logs import redact_headers

log = logging.getLogger("tokenpak.requests")

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


async def forward(request: HttpRequest, route: Route) -> HttpResponseBase:
    # First, before even the size checks: a request without the token gets 401 in its provider's
    # shape (the SDKs raise AuthenticationError) and no row, whatever else is wrong with it, so
    # whoever can reach the port cannot write into the ledger (proxy/auth.py).
    if settings.REQUIRE_TOKEN and (message := auth.refusal(request)):
        return route.provider.error(401, message)
    call = Call.begin(request, route)
    try:
        if (answered := await parse(call) or await admit(call)) is not None:
            return answered
        await prepare(call)
        return await send(call) or relay.respond(call)
    except asyncio.CancelledError:
        call.end(Status.CLIENT_CLOSED)  # the client left; a stream's relay writes its own
        raise


async def parse(call: Call) -> HttpResponse | None:
    """The checks that need no body, then the body: read, and parsed when it is JSON."""
    request, route, rec = call.request, call.route, call.rec
    if refused := limits.refusal(_scope(request)):
        return call.error(*refused)
    if why := paths.refusal(_scope(request)):
        return call.error(400, f"Invalid URL ({request.method} {request.path[:200]}):"
                               f" TokenPak does not forward this path: {why}.")
    call.headers = _upstream_headers(request, rec)
    try:
        call.body = body = await _read_body(request)
    except (RequestDataTooBig, intake.TooLarge):
        return call.error(413, intake.too_large_message())
    if route.billable and body:  # a debug capture may keep it: references, no copies
        rec.method, rec.path = request.method or "", request.get_full_path()
        rec.headers = call.headers
        rec.original_body = body
    call.big = len(body) > INLINE_BODY_BYTES
    # JSON-only endpoints read the body as JSON whatever a hand-written curl says it is (curl -d
    # sends application/x-www-form-urlencoded). A body that is not JSON gets 400, not 415: both
    # providers answer a body they cannot parse with 400 invalid_request_error, which their
    # SDKs raise as BadRequestError, and the same Content-Type with a JSON body is taken here,
    # so what is wrong is the body.
    if body and (route.json_body or _is_json(request)):
        payload, problem = await on_worker(call.big, _parse, body, route.requires_model,
                                           _sent_as(request))
        if problem:
            return call.error(400, problem)
        call.payload = payload
        rec.requested_model = rec.sent_model = call.provider.model_of(route, payload)
        rec.stream = call.provider.streams(route, payload)
    elif route.requires_model:
        return call.error(400, "Request body must be a JSON object with a model.")
    if settings.STORE_PROMPTS:
        rec.request_body = body.decode("utf-8", "replace")
    return None


async def prepare(call: Call) -> None:
    """The body to send, as admission left it, and the stats footer's text."""
    rec = call.rec
    if rec.stream:
        call.strip_usage = call.provider.ask_for_stream_usage(call.route, call.payload)
    if call.rewrite or call.strip_usage:
        call.body = await on_worker(call.big, encode, call.payload, call.big)
    # The footer's figures are final once the request is built. Pricing them may read the
    # database (off the event loop): a client that leaves meanwhile still gets a row.
    if settings.STATS_FOOTER and call.route.stats_footer:
        if call.compressed is not None:  # the one case where savings are counted up front
            rec.tokens_saved, rec.tokens_before = await asyncio.to_thread(
                call.compressed.footer_figures, rec.sent_model
            )
        call.footer_text = await footer.text_for(rec, call.provider.name)
    rec.sent_body = call.body


async def send(call: Call) -> HttpResponse | None:
    """The provider, then its fallbacks: the next is tried after a connection error, a timeout
    or a 5xx, all of them before a byte has gone to the client. The last one's answer, whatever
    it is, is the client's (call.response); None once there is one, else TokenPak's 502/504."""
    request, rec, provider = call.request, call.rec, call.provider
    query = "?" + request.META["QUERY_STRING"] if request.META.get("QUERY_STRING") else ""
    pool = upstream.upstream()
    targets = [(provider.base_url, call.headers), *(
        (f.base_url, provider.with_key(call.headers, f.key) if f.key else call.headers)
        for f in provider.fallbacks)]
    try:
        for n, (base, headers) in enumerate(targets, start=1):
            url = base + call.route.upstream_path + query
            rec.upstream = _netloc(base)
            if log.isEnabledFor(logging.DEBUG):
                log.debug("%s -> %s %s headers=%s", rec.trace_id, request.method, url,
                          redact_headers(dict(headers)))
            try:
                if await _try(call, pool, url, headers, last=n == len(targets)):
                    break
            except httpx.HTTPError as e:
                if n < len(targets) and not isinstance(e, TotalTimeout):  # time for another
                    call.failed.append(f"{rec.upstream}: {type(e).__name__}")
                    continue
                rec.failover = "; ".join(call.failed)
                return _failed(call, e, url)
    except asyncio.CancelledError:
        rec.failover = "; ".join(call.failed)
        raise
    if call.failed:
        rec.failover = "; ".join(call.failed)
        log.warning("%s failover: %s; answered by %s", rec.trace_id, rec.failover, rec.upstream)
    return None


async def _try(call: Call, pool: upstream.Upstream, url: str, headers: list[tuple[str, str]],
               last: bool) -> bool:
    """One upstream: True when its answer is the client's, False when the next one is tried."""
    rec = call.rec
    method, content = call.request.method or "POST", call.body or None
    try:
        upstream_request = pool.client.build_request(method, url, headers=headers,
                                                     content=content)
    except UnicodeEncodeError:
        # httpx encodes str header values as ASCII; a client's value beyond it (UTF-8 bytes, read
        # as latin-1) goes on as the bytes it came as. Rare: only then is the list copied.
        raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        upstream_request = pool.client.build_request(method, url, headers=raw, content=content)
    response = await in_time(pool.send(upstream_request), rec.ts)
    if response.status_code >= 500 and not last:
        await response.aclose()
        call.failed.append(f"{rec.upstream}: http_{response.status_code}")
        return False
    rec.upstream_status = response.status_code
    rec.request_id = response.headers.get(call.provider.request_id_header, "")
    call.response = response
    call.streaming = response.is_success and "text/event-stream" in response.headers.get(
        "content-type", "")
    if not call.streaming:
        call.data = await in_time(upstream.read(response), rec.ts)
    return True


def _failed(call: Call, error: httpx.HTTPError, url: str) -> HttpResponse:
    timed_out = isinstance(error, httpx.TimeoutException)
    outcome = Status.UPSTREAM_TIMEOUT if timed_out else Status.UPSTREAM_UNREACHABLE
    where, why = f"{call.provider.name} upstream {httpx.URL(url).host}", type(error).__name__
    if isinstance(error, TotalTimeout):
        message = f"TokenPak: {error}."
    elif timed_out:
        message = f"TokenPak: {where} timed out ({why})."
    else:
        message = f"TokenPak: could not reach {where} ({why})."
    return call.error(504 if timed_out else 502, message, outcome, why)


def _scope(request: HttpRequest) -> Mapping[str, Any]:
    """The ASGI scope: the proxy is served over ASGI only (ProxyFirst, or Django's handler)."""
    return cast(ASGIRequest, request).scope


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
    user_agent, sessions = "", {}
    for raw_name, raw_value in _scope(request)["headers"]:
        name = raw_name.decode("latin-1").lower()
        if name.startswith("x-tokenpak-"):
            value = raw_value.decode("latin-1").strip()
            if name == "x-tokenpak-agent":
                rec.agent_id = value
            elif name == "x-tokenpak-session":
                rec.session_id = value
        elif name not in _DROP_REQUEST:
            headers.append((name, raw_value.decode("latin-1")))
            if name == "user-agent":
                user_agent = headers[-1][1]
            elif name in clients.SESSION_HEADERS:
                sessions[name] = headers[-1][1].strip()
    if (not rec.agent_id or not rec.session_id) and (client := clients.identify(user_agent)):
        rec.agent_id = rec.agent_id or client.agent
        rec.session_id = rec.session_id or sessions.get(client.session_header, "")
    return headers


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
