"""Proxy routes. Each view picks a Route and hands the request to proxy.forward.

OpenAI SDKs use base_url http://127.0.0.1:8766/v1, Anthropic SDKs http://127.0.0.1:8766;
the /openai and /anthropic prefixes are explicit aliases for tools that need them.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from ninja import Router

from proxy.forward import forward
from proxy.providers import ANTHROPIC, OPENAI, Provider, Route

router = Router(tags=["proxy"])

CHAT = Route(
    OPENAI, "chat.completions", "/v1/chat/completions", requires_model=True, json_body=True,
    stats_footer=True, compress=True,
)
MESSAGES = Route(
    ANTHROPIC, "messages", "/v1/messages", requires_model=True, json_body=True,
    stats_footer=True, compress=True,
)
COUNT_TOKENS = Route(
    ANTHROPIC, "count_tokens", "/v1/messages/count_tokens", billable=False, json_body=True
)
# OpenAI's model calls besides chat take JSON only. Its other endpoints (files, audio, image
# edits, uploads, …) take multipart forms too, and more of them keep coming: a body declared
# as anything but JSON goes to those as it is, for the provider to judge.
OPENAI_JSON_ONLY = frozenset({"chat", "completions", "embeddings", "moderations", "responses"})


def _post(path: str, route: Route) -> None:
    async def view(request: HttpRequest) -> HttpResponse:
        return await forward(request, route)

    router.add_api_operation(path, ["POST"], view, include_in_schema=False)


for prefix in ("", "/openai"):
    _post(f"{prefix}/v1/chat/completions", CHAT)
for prefix in ("", "/anthropic"):
    _post(f"{prefix}/v1/messages", MESSAGES)
    _post(f"{prefix}/v1/messages/count_tokens", COUNT_TOKENS)


def _models_provider(request: HttpRequest) -> Provider:
    # Both providers serve GET /v1/models; only Anthropic's SDK sends anthropic-version.
    if "anthropic-version" in request.headers or "x-api-key" in request.headers:
        return ANTHROPIC
    return OPENAI


async def _models(request: HttpRequest, path: str) -> HttpResponse:
    provider = _models_provider(request)
    if request.path.startswith("/openai/"):
        provider = OPENAI
    elif request.path.startswith("/anthropic/"):
        provider = ANTHROPIC
    return await forward(request, Route(provider, "models", path, billable=False))


async def models_list(request: HttpRequest) -> HttpResponse:
    return await _models(request, "/v1/models")


async def model_detail(request: HttpRequest, rest: str) -> HttpResponse:
    return await _models(request, f"/v1/models/{rest}")


for prefix in ("", "/openai", "/anthropic"):
    router.add_api_operation(f"{prefix}/v1/models", ["GET"], models_list, include_in_schema=False)
    router.add_api_operation(
        f"{prefix}/v1/models/{{rest}}", ["GET"], model_detail, include_in_schema=False
    )


async def openai_other(request: HttpRequest, rest: str) -> HttpResponse:
    """embeddings, responses, completions, …: forwarded as they are, usage as reported."""
    first = rest.split("/")[0]
    return await forward(request, Route(OPENAI, first[:32], f"/v1/{rest}",
                                        json_body=first in OPENAI_JSON_ONLY))


async def anthropic_other(request: HttpRequest, rest: str) -> HttpResponse:
    """message batches: JSON only, like everything under /v1/messages."""
    event_type = ("messages." + rest.split("/")[0])[:32]
    return await forward(
        request, Route(ANTHROPIC, event_type, f"/v1/messages/{rest}", json_body=True))


async def anthropic_prefixed(request: HttpRequest, rest: str) -> HttpResponse:
    first = rest.split("/")[0]
    return await forward(request, Route(ANTHROPIC, first[:32], f"/v1/{rest}",
                                        json_body=first == "messages"))


# Catch-alls last: Django takes the first matching pattern.
for path, view in [
    ("/v1/messages/{path:rest}", anthropic_other),
    ("/anthropic/v1/{path:rest}", anthropic_prefixed),
    ("/openai/v1/{path:rest}", openai_other),
    ("/v1/{path:rest}", openai_other),
]:
    router.add_api_operation(path, ["POST"], view, include_in_schema=False)
