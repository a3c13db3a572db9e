"""Proxy routes: every provider's URL patterns (proxy/providers), each handing its Route to
proxy.forward.

OpenAI SDKs use base_url http://127.0.0.1:8766/v1, Anthropic SDKs http://127.0.0.1:8766;
the /openai and /anthropic prefixes are explicit aliases for tools that need them. The order
of the patterns is `providers.served()`'s: Django takes the first that matches.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from django.http import HttpRequest, HttpResponseBase
from ninja import Router

from proxy.forward import forward
from proxy.providers import Served, served

router = Router(tags=["proxy"])


def _view(pattern: Served) -> Callable[..., Awaitable[HttpResponseBase]]:
    # ninja reads a view's parameters from its signature: `rest` where the pattern has one.
    if "{" not in pattern.path:
        async def view(request: HttpRequest) -> HttpResponseBase:
            return await forward(request, pattern.route(request.headers))

        return view

    async def view_rest(request: HttpRequest, rest: str) -> HttpResponseBase:
        return await forward(request, pattern.route(request.headers, rest))

    return view_rest


for _pattern in served():
    router.add_api_operation(_pattern.path, [_pattern.method], _view(_pattern),
                             include_in_schema=False)
