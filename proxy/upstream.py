"""The shared upstream client: one pooled httpx.AsyncClient per event loop.

A client belongs to the loop it was created on; daphne serves on one loop, tests and
management commands may run others, so the pool is keyed by loop and dies with it.

Requests are built by the client (its timeouts, its default headers) and sent through its
transport, `send()`: what AsyncClient.send adds on top is an auth flow, redirects (TokenPak
follows none), and a cookie jar, which in a shared client would keep one caller's provider
cookies and send them with everyone's next request. Skipping those layers also saves about
0.1 ms a request.

The connections are split over SHARDS pools, taken in turn: httpcore's pool looks at every
connection it keeps (a poll() on each idle socket) for every request, which at 32 concurrent
requests took 44 % of the event loop's time (bench/overhead.py, py-spy).
"""

from __future__ import annotations

import asyncio
import itertools
import time
import weakref
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

import httpx
from django.conf import settings

SHARDS = 8
T = TypeVar("T")


class Upstream:
    def __init__(self) -> None:
        self.transports = [
            httpx.AsyncHTTPTransport(
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=16),
                # Clients' proxies are for the client; TokenPak talks to the provider it was told.
                trust_env=False,
            )
            for _ in range(SHARDS)
        ]
        self._turn = itertools.cycle(self.transports)
        self.client = httpx.AsyncClient(
            transport=self.transports[0],
            timeout=httpx.Timeout(
                connect=settings.UPSTREAM_CONNECT_TIMEOUT,
                read=settings.UPSTREAM_READ_TIMEOUT,
                write=settings.UPSTREAM_READ_TIMEOUT,
                pool=settings.UPSTREAM_CONNECT_TIMEOUT,
            ),
            trust_env=False,
            follow_redirects=False,
        )

    async def send(self, request: httpx.Request) -> httpx.Response:
        """The response with its body unread: read it, or iterate it, then aclose() it."""
        response = await next(self._turn).handle_async_request(request)
        response.request = request
        return response

    async def aclose(self) -> None:
        await self.client.aclose()
        for transport in self.transports[1:]:
            await transport.aclose()


_upstreams: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Upstream] = (
    weakref.WeakKeyDictionary()
)


def upstream() -> Upstream:
    loop = asyncio.get_running_loop()
    u = _upstreams.get(loop)
    if u is None or u.client.is_closed:
        u = _upstreams[loop] = Upstream()
    return u


class TotalTimeout(httpx.TimeoutException):
    """providers.total_timeout ran out: handled like any upstream timeout, never failed over."""


async def in_time(step: Awaitable[T], started: float) -> T:
    """step, within what is left of providers.total_timeout since `started` (no limit at 0)."""
    total = settings.UPSTREAM_TOTAL_TIMEOUT
    if not total:
        return await step
    try:
        return await asyncio.wait_for(step, max(0.0, started + total - time.time()))
    except TimeoutError:
        raise TotalTimeout(
            f"the request took longer than providers.total_timeout ({total:g} s)") from None


async def timed(chunks: AsyncIterator[bytes], started: float) -> AsyncIterator[bytes]:
    it = aiter(chunks)
    while True:
        try:
            chunk = await in_time(anext(it), started)
        except StopAsyncIteration:
            return
        yield chunk


async def read(response: httpx.Response) -> bytes:
    try:
        return await response.aread()
    finally:
        await response.aclose()
