"""A request's body, read only when it is wanted and never past the limit.

ASGI servers hand an application the body in pieces as it arrives (uvicorn holds at most 64 KB
before it stops reading the socket), so a body is in memory only if the application keeps it.
A proxy request's body is read by its view, after the checks that need no body (token, URL,
headers), through ProxyRequest.read_body: a declared length over the limit is refused before a
byte is read, and a chunked body (no declared length) is refused as soon as it passes the limit.
Either way the request holds at most the limit, and the handler closes the connection instead
of reading the rest (proxy/handler.py).

Django's own pages (admin, dashboard, telemetry API) read their bodies through Django, which
spools them to a temporary file before any view runs: `guard` refuses there, before Django,
what the proxy routes refuse.
"""

from __future__ import annotations

import io
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from django.conf import settings
from django.core.handlers.asgi import ASGIRequest

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]


class TooLarge(Exception):
    """The body is over the limit: declared so, or as it arrived."""


class Gone(Exception):
    """The client disconnected before its request body was complete."""


def declared_length(scope: Scope) -> int | None:
    """The Content-Length the client declared; None for a chunked body or none at all. (The
    server has refused a malformed or repeated one before the application sees it.)"""
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def has_body(scope: Scope, declared: int | None) -> bool:
    if declared is not None:
        return declared > 0
    return any(name == b"transfer-encoding" for name, _ in scope["headers"])


def too_large_message() -> str:
    return f"Request body is larger than {settings.MAX_BODY_BYTES // (1024 * 1024)} MB."


class ProxyRequest(ASGIRequest):
    """An ASGIRequest whose body is awaited from the server by its view, up to a limit.

    `on_body` runs once the whole body has arrived: the handler then listens for the client
    leaving, which it could not do while the view was still reading."""

    def __init__(self, scope: Scope, receive: Receive, on_body: Callable[[], None]) -> None:
        super().__init__(scope, io.BytesIO())
        self._receive = receive
        self._on_body = on_body
        self._received: bytes | None = None
        self._declared = declared_length(scope)
        # True while part of a body is still on the connection: the handler closes it then.
        self.unread = has_body(scope, self._declared)

    async def read_body(self, limit: int) -> bytes:
        """The whole body; TooLarge past `limit` bytes, Gone if the client left meanwhile."""
        if self._received is not None:
            return self._received
        if self._declared is not None and self._declared > limit:
            raise TooLarge
        # BytesIO, not a list joined at the end: getvalue() hands over its buffer without a
        # copy, so a body at the limit takes the limit once, not twice.
        buffer = io.BytesIO()
        size = 0
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                raise Gone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise TooLarge
            buffer.write(chunk)
            if not message.get("more_body", False):
                break
        self._received = buffer.getvalue()
        self._stream = io.BytesIO(self._received)  # request.body from here on, as Django reads it
        self.unread = False
        self._on_body()
        return self._received

    @property
    def body(self) -> bytes:
        if self._received is None:
            # Django would read the empty stream and answer b"": a view must await it first.
            raise RuntimeError("await request.read_body(limit) before reading request.body")
        return self._received


def guard(scope: Scope, receive: Receive) -> tuple[str | None, Receive]:
    """For a path Django reads: (a refusal, receive). The refusal is a message when the declared
    length is over the limit; a chunked body gets a receive that raises TooLarge once past it."""
    limit = settings.MAX_BODY_BYTES
    declared = declared_length(scope)
    if declared is not None:
        return (too_large_message() if declared > limit else None), receive
    if not has_body(scope, declared):
        return None, receive
    size = 0

    async def bounded() -> MutableMapping[str, Any]:
        nonlocal size
        message = await receive()
        size += len(message.get("body", b""))
        if size > limit:
            raise TooLarge
        return message

    return None, bounded
