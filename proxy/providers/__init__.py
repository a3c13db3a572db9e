"""The providers TokenPak proxies: one module each, loaded from the registry in settings.

The registry is `tokenpak_site.conf.PROVIDERS`, one line per provider (its name, label, default
base URL and the dotted path of its class here); settings builds each provider's keys and
values from it (`settings.PROVIDERS`). `REGISTRY` holds one instance per line, in its order,
and generates what depends on the set of providers: the URL patterns (`served`, read by
proxy/api.py) and the path prefixes the ASGI fast path takes (`url_prefixes`, proxy/handler.py).
proxy's AppConfig.ready hands each provider's rules to budgets and compression.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from proxy.providers.base import Endpoint, Provider, Route, StreamTap

__all__ = ["ANTHROPIC", "OPENAI", "REGISTRY", "Endpoint", "Provider", "Route", "Served",
           "StreamTap", "served", "url_prefixes"]


def _load() -> dict[str, Provider]:
    registry: dict[str, Provider] = {}
    for name, entry in settings.PROVIDERS.items():
        provider = import_string(entry.implementation)()
        if provider.name != name:
            raise ImproperlyConfigured(f"{entry.implementation} is provider {provider.name!r}, "
                                       f"its registry line says {name!r}")
        registry[name] = provider
    return registry


REGISTRY: dict[str, Provider] = _load()
OPENAI = REGISTRY["openai"]
ANTHROPIC = REGISTRY["anthropic"]


@dataclass(frozen=True)
class Served:
    """One URL pattern as the router takes it, with the providers that declared it: one, or
    several (a bare pattern they share; the first is the default, see Provider.claims)."""

    method: str
    path: str
    by: tuple[tuple[Provider, Endpoint], ...]

    def route(self, headers: Mapping[str, str], rest: str | None = None) -> Route:
        endpoint = self.by[0][1]
        if len(self.by) > 1:
            endpoint = next((e for p, e in self.by if p.claims(headers)), endpoint)
        return endpoint.route_for(rest)


def _literal(path: str) -> str:
    return path.split("{")[0]


def served() -> list[Served]:
    """Every pattern of every provider, bare and under its alias, in the order Django tries
    them: literal patterns, then those with one parameter, then catch-alls, the one with the
    longest literal start first (so /v1/messages/{path:rest} comes before /v1/{path:rest})."""
    found: dict[tuple[str, str], list[tuple[Provider, Endpoint]]] = {}
    for provider in REGISTRY.values():
        for endpoint in provider.endpoints():
            paths = ([endpoint.path] if endpoint.bare else []) + (
                [provider.alias + endpoint.path] if endpoint.alias else [])
            for path in paths:
                found.setdefault((endpoint.method, path), []).append((provider, endpoint))

    def rank(item: tuple[tuple[str, str], list]) -> tuple[int, int]:
        (_method, path), _ = item
        if "{path:" in path:
            return 2, -len(_literal(path))
        return (1 if "{" in path else 0), 0

    return [Served(method, path, tuple(by))
            for (method, path), by in sorted(found.items(), key=rank)]


def url_prefixes() -> tuple[str, ...]:
    """The path prefixes of every provider pattern ("/v1/", "/openai/v1/", ...): a request
    under one goes to the proxy's own ASGI path (proxy/handler.py)."""
    prefixes: dict[str, None] = {}
    for provider in REGISTRY.values():
        for endpoint in provider.endpoints():
            first = "/" + endpoint.path.split("/")[1] + "/"
            if endpoint.bare:
                prefixes[first] = None
            if endpoint.alias:
                prefixes[provider.alias + first] = None
    return tuple(prefixes)
