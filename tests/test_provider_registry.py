"""The provider registry: one line per provider generates its settings, routes and prefixes.

What each provider does with a request is the contract tests' business; here, that the
registry wires every provider in the same way, keeps the routes TokenPak always served, and
takes a new provider (one whose model is in the URL path, as Gemini's is) from one module and
one line.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpResponse
from django.test import RequestFactory
from django.urls import Resolver404, get_resolver

import proxy.api
from budgets import routes
from proxy import compression, handler, providers
from proxy.providers import REGISTRY, Endpoint, Provider, Route
from proxy.providers.anthropic import Anthropic
from proxy.providers.openai import OpenAI
from tokenpak_site import conf


def routed(method: str, path: str, monkeypatch: pytest.MonkeyPatch, **headers: str) -> Any:
    """(provider, event_type, upstream_path, billable, json_body) of the Route a request
    takes, or the status it gets without one."""
    taken: list[Route] = []

    async def forward(request: Any, route: Route) -> HttpResponse:
        taken.append(route)
        return HttpResponse()

    monkeypatch.setattr(proxy.api, "forward", forward)
    try:
        match = get_resolver().resolve(path)
    except Resolver404:
        return 404
    request = RequestFactory().generic(method, path, **headers)
    answer = match.func(request, *match.args, **match.kwargs)
    response = asyncio.run(answer) if asyncio.iscoroutine(answer) else answer
    if not taken:
        return response.status_code
    r = taken[0]
    return r.provider.name, r.event_type, r.upstream_path, r.billable, r.json_body


# What the routes were before they were generated from the registry.
ROUTES = [
    ("POST", "/v1/chat/completions", {}, ("openai", "chat.completions", "/v1/chat/completions",
                                          True, True)),
    ("POST", "/openai/v1/chat/completions", {}, ("openai", "chat.completions",
                                                 "/v1/chat/completions", True, True)),
    ("POST", "/anthropic/v1/chat/completions", {}, ("anthropic", "chat", "/v1/chat/completions",
                                                    True, False)),
    ("POST", "/v1/messages", {}, ("anthropic", "messages", "/v1/messages", True, True)),
    ("POST", "/anthropic/v1/messages", {}, ("anthropic", "messages", "/v1/messages", True, True)),
    ("POST", "/openai/v1/messages", {}, ("openai", "messages", "/v1/messages", True, False)),
    ("POST", "/v1/messages/count_tokens", {}, ("anthropic", "count_tokens",
                                               "/v1/messages/count_tokens", False, True)),
    ("POST", "/v1/messages/batches/b1/cancel", {}, ("anthropic", "messages.batches",
                                                    "/v1/messages/batches/b1/cancel", True, True)),
    ("POST", "/anthropic/v1/messages/batches", {}, ("anthropic", "messages",
                                                    "/v1/messages/batches", True, True)),
    ("POST", "/v1/embeddings", {}, ("openai", "embeddings", "/v1/embeddings", True, True)),
    ("POST", "/v1/responses/r1/cancel", {}, ("openai", "responses", "/v1/responses/r1/cancel",
                                             True, True)),
    ("POST", "/v1/files", {}, ("openai", "files", "/v1/files", True, False)),
    ("POST", "/openai/v1/audio/speech", {}, ("openai", "audio", "/v1/audio/speech", True, False)),
    ("POST", "/v1/chat/completions/c1", {}, ("openai", "chat", "/v1/chat/completions/c1", True,
                                             True)),
    ("POST", "/v1/" + "x" * 40, {}, ("openai", "x" * 32, "/v1/" + "x" * 40, True, False)),
    ("POST", "/v1/models", {}, 405),
    ("POST", "/v1/models/a/b", {}, ("openai", "models", "/v1/models/a/b", True, False)),
    ("GET", "/v1/models", {}, ("openai", "models", "/v1/models", False, False)),
    ("GET", "/v1/models", {"HTTP_ANTHROPIC_VERSION": "2023-06-01"},
     ("anthropic", "models", "/v1/models", False, False)),
    ("GET", "/v1/models/m1", {"HTTP_X_API_KEY": "k"},
     ("anthropic", "models", "/v1/models/m1", False, False)),
    ("GET", "/openai/v1/models", {"HTTP_X_API_KEY": "k"},
     ("openai", "models", "/v1/models", False, False)),
    ("GET", "/anthropic/v1/models/m1", {}, ("anthropic", "models", "/v1/models/m1", False,
                                            False)),
    ("GET", "/v1/models/a/b", {}, 405),
    ("GET", "/v1/messages/batches", {}, 405),
    ("GET", "/openai/v1/embeddings", {}, 405),
    ("POST", "/v1/", {}, 404),
    ("POST", "/v1beta/models/gemini-2.0-flash:generateContent", {}, 404),
]


@pytest.mark.parametrize(("method", "path", "headers", "expected"), ROUTES,
                         ids=[f"{m} {p[:40]}{' ' + next(iter(h)) if h else ''}"
                              for m, p, h, _ in ROUTES])
def test_it_serves_every_route_it_served_before(method, path, headers, expected, monkeypatch):
    assert routed(method, path, monkeypatch, **headers) == expected


def test_it_gives_the_fast_path_every_providers_prefixes():
    assert handler.PREFIXES == ("/v1/", "/openai/v1/", "/anthropic/v1/")


def test_it_generates_each_providers_settings_from_its_registry_line(settings):
    assert list(REGISTRY) == [p.name for p in conf.PROVIDERS] == list(settings.PROVIDERS)
    assert isinstance(REGISTRY["openai"], OpenAI) and isinstance(REGISTRY["anthropic"], Anthropic)
    assert providers.OPENAI is REGISTRY["openai"] and providers.ANTHROPIC is REGISTRY["anthropic"]
    key = conf.KEYS["providers.anthropic.base_url"]
    assert (key.env, key.kind, key.default, key.help) == (
        "TOKENPAK_ANTHROPIC_BASE_URL", "url", "https://api.anthropic.com", "Anthropic upstream")
    paths = list(conf.KEYS)  # where the settings reference lists them
    at = paths.index("server.allowed_hosts")
    assert paths[at + 1:at + 4] == ["providers.openai.base_url", "providers.anthropic.base_url",
                                    "providers.connect_timeout"]
    assert settings.PROVIDERS["openai"].base_url == settings.OPENAI_BASE_URL
    assert REGISTRY["openai"].base_url == settings.PROVIDERS["openai"].base_url


def test_it_hands_each_providers_rules_to_budgets_and_compression():
    assert list(routes._rules) == list(compression._slots) == list(REGISTRY)
    assert routes.defaults()[("openai", "gpt-4o")] == "gpt-4o-mini"
    message = {"role": "tool", "content": "out"}
    assert compression._slots["openai"](message) == [(("content",), "out", True)]
    assert compression._slots["anthropic"](message) == []


def test_it_refuses_a_registry_line_whose_class_is_another_provider(settings):
    entry = settings.PROVIDERS["openai"]
    settings.PROVIDERS = {"openai": entry, "claude": settings.PROVIDERS["anthropic"]}
    with pytest.raises(ImproperlyConfigured, match="its registry line says 'claude'"):
        providers._load()


# --- a new provider: one module, one line -----------------------------------------------------


class Toy(Provider):
    """A provider the way Gemini is: the model and the call in the path, the key in a header
    of its own, the output limit nested in the body."""

    name = "toy"
    alias = "/toy"
    key_headers = ("x-goog-api-key",)

    def endpoints(self) -> list[Endpoint]:
        return [Endpoint("/v1beta/models/{path:rest}", self._call)]

    def _call(self, rest: str) -> Route:
        return Route(self, rest.partition(":")[2][:32], f"/v1beta/models/{rest}",
                     json_body=True)

    def model_of(self, route: Route, payload: Any) -> str:
        return route.upstream_path.removeprefix("/v1beta/models/").partition(":")[0]

    def with_model(self, route: Route, payload: Any, model: str) -> tuple[Route, Any]:
        call = route.upstream_path.partition(":")[2]
        return Route(self, route.event_type, f"/v1beta/models/{model}:{call}",
                     json_body=True), payload

    def streams(self, route: Route, payload: Any) -> bool:
        return route.event_type == "streamGenerateContent"

    def output_limit(self, payload: Any) -> int | None:
        return (payload.get("generationConfig") or {}).get("maxOutputTokens")

    def key_header(self, key: str) -> tuple[str, str]:
        return ("x-goog-api-key", key)


LINE = conf.ProviderEntry("toy", "Toy", "https://toy.example",
                          "tests.test_provider_registry.Toy")


def test_it_takes_a_new_provider_from_one_module_and_one_line(monkeypatch, settings):
    monkeypatch.setattr(conf, "PROVIDERS", (*conf.PROVIDERS, LINE))
    key = {k.path: k for k in conf._provider_keys()}["providers.toy.base_url"]
    assert (key.env, key.default) == ("TOKENPAK_TOY_BASE_URL", "https://toy.example")
    monkeypatch.setitem(conf.KEYS, key.path, key)
    config = conf.Config({"TOKENPAK_TOY_BASE_URL": "http://127.0.0.1:9/"}, {})
    values = conf.provider_settings(
        config, {"providers": {"toy": {"fallbacks": ["http://127.0.0.1:10"]}}}, {})
    assert list(values) == ["openai", "anthropic", "toy"]
    assert values["toy"].base_url == "http://127.0.0.1:9"
    assert [f.base_url for f in values["toy"].fallbacks] == ["http://127.0.0.1:10"]

    settings.PROVIDERS = values
    loaded = providers._load()
    toy = loaded["toy"]
    assert isinstance(toy, Toy) and toy.base_url == "http://127.0.0.1:9"
    monkeypatch.setattr(providers, "REGISTRY", loaded)
    patterns = [(s.method, s.path) for s in providers.served()]
    # Its patterns join the others', catch-alls after everything else, longest start first.
    assert patterns.index(("POST", "/toy/v1beta/models/{path:rest}")) < patterns.index(
        ("POST", "/v1beta/models/{path:rest}")) < patterns.index(("POST", "/v1/{path:rest}"))
    assert patterns.index(("GET", "/v1/models/{rest}")) < patterns.index(
        ("POST", "/v1/messages/{path:rest}"))
    assert providers.url_prefixes() == ("/v1/", "/openai/v1/", "/anthropic/v1/", "/v1beta/",
                                        "/toy/v1beta/")

    served = next(s for s in providers.served() if s.path == "/v1beta/models/{path:rest}")
    route = served.route({}, "gemini-2.0-flash:streamGenerateContent")
    payload = {"contents": [], "generationConfig": {"maxOutputTokens": 77}}
    assert toy.model_of(route, payload) == "gemini-2.0-flash"
    assert toy.streams(route, payload) and toy.output_limit(payload) == 77
    cheaper, _ = toy.with_model(route, payload, "gemini-2.0-flash-lite")
    assert cheaper.upstream_path == "/v1beta/models/gemini-2.0-flash-lite:streamGenerateContent"
    assert toy.with_key([("x-goog-api-key", "client"), ("accept", "*/*")], "held") == [
        ("accept", "*/*"), ("x-goog-api-key", "held")]
