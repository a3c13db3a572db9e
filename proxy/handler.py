"""The proxy routes' own ASGI entry: Django's URL resolver and the ninja view, nothing else.

Django's ASGIHandler costs about 2 ms a request before a view runs, all of it for things a
proxy route does not use: seven middleware (sessions, CSRF, auth, messages: an SDK sends no
cookies), request_started/request_finished signals whose receivers run on a worker thread
(two thread hops), and a fresh thread per request for thread-sensitive code. The proxy path
touches no database on the event loop and uses no session, so `ProxyFirst` takes the routes
under /v1 (but /v1/telemetry), /openai/v1 and /anthropic/v1 (every provider's prefixes, from
proxy/providers) from the ASGI server to the same ninja operations Django would call, and
passes every other path (admin, API docs, dashboard, telemetry API) to Django untouched,
middleware and all.

Kept from Django's handler: the Host check against ALLOWED_HOSTS (a page in the browser must
not reach the proxy through DNS rebinding), URL resolution, and a client that disconnects
cancelling the view or the stream it is reading (views catch asyncio.CancelledError, record
the request and re-raise), as Django ≥ 5.0 does.

Added: absurd URLs and headers (proxy/limits.py) get 414 or 431 on every path, as uvicorn
does not refuse them: in the provider's shape with a ledger row on the proxy routes (their
view checks), in plain text before Django on the others. Bodies likewise (proxy/intake.py): a
proxy route's view reads its body itself, after the token, URL and header checks, never past
settings.MAX_BODY_BYTES; on the other paths a body over it gets 413 before Django reads it.
A request answered before its body was read has its connection closed: reading the rest would
be the cost the early answer avoids.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, MutableMapping
from typing import Any, cast

from django.core.exceptions import DisallowedHost
from django.http import HttpResponse, HttpResponseBase, StreamingHttpResponse
from django.urls import Resolver404, get_resolver

from proxy import intake, limits, providers
from proxy.intake import ProxyRequest

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
# Django's ASGIHandler types its scope as a dict, uvicorn hands a MutableMapping: either.
App = Callable[[Any, Any, Any], Awaitable[None]]

log = logging.getLogger("django.request")

# Every provider pattern's prefix: ("/v1/", "/openai/v1/", "/anthropic/v1/").
PREFIXES = providers.url_prefixes()
# The telemetry REST API shares /v1 with OpenAI's paths but is Django's: it needs the session
# and auth middleware this path skips.
DJANGO_PREFIXES = ("/v1/telemetry/",)


class ProxyFirst:
    def __init__(self, django: App, on_stop: Callable[[], None]) -> None:
        self.django = django
        self.on_stop = on_stop

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if (scope["type"] == "http" and path.startswith(PREFIXES)
                and not path.startswith(DJANGO_PREFIXES)):
            await self.proxy(scope, receive, send)  # its view refuses absurd sizes, in shape
        elif scope["type"] == "http" and (refused := limits.refusal(scope)):
            # uvicorn hands on headers of any size (proxy/limits.py): Django would take them too.
            status, message = refused
            await _send(HttpResponse(message, status=status, content_type="text/plain"), send)
        elif scope["type"] == "lifespan":
            await self.lifespan(receive, send)
        elif scope["type"] == "http":
            await self.page(scope, receive, send)
        else:
            await self.django(scope, receive, send)

    async def page(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Django's paths, with a body over the limit refused before Django spools it to disk."""
        too_large, bounded = intake.guard(scope, receive)
        if too_large is None:
            try:
                await self.django(scope, bounded, send)
                return
            except intake.TooLarge:  # raised while Django read the body: nothing was sent yet
                too_large = intake.too_large_message()
        response = HttpResponse(too_large, status=413, content_type="text/plain")
        response["Connection"] = "close"
        await _send(response, send)

    async def lifespan(self, receive: Receive, send: Send) -> None:
        """uvicorn ends a worker by re-raising SIGTERM once its connections are done, so
        atexit never runs there: the shutdown message is the last moment to write what the
        process still holds (queued ledger rows, budget leases)."""
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await asyncio.to_thread(self.on_stop)
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def proxy(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        assert task is not None
        state = {"finished": False, "gone": False}
        listeners: list[asyncio.Task] = []

        def on_disconnect(listener: asyncio.Task) -> None:
            # After the last byte went out some servers report a disconnect: not a cancel.
            if not listener.cancelled() and listener.result() and not state["finished"]:
                state["gone"] = True
                task.cancel()

        def listen() -> None:
            # Only once the view has the whole body: until then receive() is the body's.
            listener = asyncio.create_task(_disconnected(receive))
            listener.add_done_callback(on_disconnect)
            listeners.append(listener)

        request = ProxyRequest(scope, receive, on_body=listen)
        try:
            response = await _respond(request)
            if request.unread:  # answered without its body (refused): do not read the rest
                response["Connection"] = "close"
            await _send(response, send)
            state["finished"] = True
        except intake.Gone:
            return  # the client left while sending its body: no one to answer
        except asyncio.CancelledError:
            if not state["gone"]:
                raise  # the server is stopping, not the client leaving
        finally:
            for listener in listeners:
                listener.cancel()


async def _disconnected(receive: Receive) -> bool:
    message = await receive()
    return message["type"] == "http.disconnect"


async def _respond(request: ProxyRequest) -> HttpResponseBase:
    try:
        request.get_host()
    except DisallowedHost:
        return HttpResponse("Bad Request (Host)", status=400, content_type="text/plain")
    try:
        match = get_resolver().resolve(request.path_info)
    except Resolver404:
        return HttpResponse("Not Found", status=404, content_type="text/plain")
    request.resolver_match = match
    try:
        return await match.func(request, *match.args, **match.kwargs)
    except (asyncio.CancelledError, intake.Gone):
        raise
    except Exception:
        log.exception("Internal Server Error: %s", request.path)
        return HttpResponse("Internal Server Error", status=500, content_type="text/plain")


async def _send(response: HttpResponseBase, send: Send) -> None:
    # A proxied answer learns whether its start went out: its row says so (proxy/relay.py).
    started = getattr(response, "started", None)
    try:
        headers = [(k.encode("ascii"), v.encode("latin-1")) for k, v in response.items()]
        content = b"" if response.streaming else cast(HttpResponse, response).content
        if not response.streaming and not response.has_header("content-length"):
            headers.append((b"content-length", str(len(content)).encode("ascii")))
        await send({"type": "http.response.start", "status": response.status_code,
                    "headers": headers})
    except BaseException as e:
        if started is not None:
            await started(e)
        raise
    if started is not None:
        await started(None)
    if not response.streaming:
        await send({"type": "http.response.body", "body": content})
        return
    # Always an async iterator here: the relay (proxy/relay.py), or Django's page served async.
    stream = cast(AsyncGenerator[bytes], cast(StreamingHttpResponse, response).streaming_content)
    try:
        async for chunk in stream:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    finally:
        # A cancel while sending leaves the relay parked at a yield: close it there, so it
        # records what happened now and not when the generator is collected.
        await stream.aclose()
    await send({"type": "http.response.body"})
