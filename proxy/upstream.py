"""The shared upstream client: one pooled httpx.AsyncClient per event loop.

A client belongs to the loop it was created on; daphne serves on one loop, tests and
management commands may run others, so the pool is keyed by loop and dies with it.
"""

from __future__ import annotations

import asyncio
import weakref

import httpx
from django.conf import settings

_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
    weakref.WeakKeyDictionary()
)


def client() -> httpx.AsyncClient:
    loop = asyncio.get_running_loop()
    c = _clients.get(loop)
    if c is None or c.is_closed:
        c = httpx.AsyncClient(
            timeout=httpx.Timeout(
                connect=settings.UPSTREAM_CONNECT_TIMEOUT,
                read=settings.UPSTREAM_READ_TIMEOUT,
                write=settings.UPSTREAM_READ_TIMEOUT,
                pool=settings.UPSTREAM_CONNECT_TIMEOUT,
            ),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
            # Clients' proxies are for the client; TokenPak talks to the provider it was told.
            trust_env=False,
            follow_redirects=False,
        )
        _clients[loop] = c
    return c
