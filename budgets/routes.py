"""route-cheap: which cheaper model answers instead of an expensive one.

Defaults are derived from the shipped pricing catalog, so a refreshed catalog brings its new
models along: an OpenAI model goes to its own `-mini` (gpt-4o → gpt-4o-mini, gpt-5.4-pro →
gpt-5.4-mini), else to its major version's (gpt-5.2 → gpt-5-mini); a Claude Opus or Sonnet to
the Haiku of its generation (the newest Haiku when its generation has none). Rows in
tp_budget_routes (CLI `budget route`, the admin) win. A request's model is matched under the
names pricing resolves it by (dated, prefixed, `-latest`): claude-sonnet-4-5-20250929 routes
like claude-sonnet-4-5. Each provider's default rule is in its module (proxy/providers,
`cheap_routes`), handed over with `register` as proxy starts.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from functools import cache

from django.conf import settings

from telemetry import pricing

_OVERRIDES_TTL = 2.0


class RouteError(ValueError):
    """A mapping TokenPak refuses (an unknown model, a cross-provider route); one line."""


def _base_names(provider: str) -> dict[str, pricing.Price]:
    """Catalog entries of a provider under their plain names (no dated duplicates)."""
    catalog = pricing.catalog_prices()
    return {
        name: price
        for name, price in catalog.items()
        if price.provider == provider and pricing.candidates(name)[-1] == name
    }


def costs_less(a: pricing.Price, b: pricing.Price) -> bool:
    """a is a cheaper model than b: less per input token, no more per output token."""
    return a.input < b.input and a.output <= b.output


# A provider's rule: its catalog models under their plain names → {model: cheaper model}.
Rule = Callable[[dict[str, pricing.Price]], dict[str, str]]
_rules: dict[str, Rule] = {}


def register(provider: str, rule: Rule) -> None:
    """The default routes of a provider (each provider's module has its rule; proxy registers
    them as it starts, so budgets never imports proxy)."""
    _rules[provider] = rule
    defaults.cache_clear()


@cache
def defaults() -> dict[tuple[str, str], str]:
    """{(provider, model): cheaper model} derived from the catalog by each provider's rule."""
    routes: dict[tuple[str, str], str] = {}
    for provider, rule in _rules.items():
        for model, target in rule(_base_names(provider)).items():
            routes[(provider, model)] = target
    return routes


_lock = threading.Lock()
_overrides: dict[tuple[str, str], str] = {}
_loaded_at = -_OVERRIDES_TTL


def _override_rows() -> dict[tuple[str, str], str]:
    """The user's rows, re-read at most every couple of seconds (sync code only)."""
    global _overrides, _loaded_at
    with _lock:
        if time.monotonic() - _loaded_at >= _OVERRIDES_TTL:
            from budgets.models import CheapRoute

            _overrides = {
                (r.provider, r.model): r.cheaper for r in CheapRoute.objects.all()
            }
            _loaded_at = time.monotonic()
        return _overrides


def forget() -> None:
    """The next cheaper() re-reads the user's rows (after a change in this process)."""
    global _loaded_at
    with _lock:
        _loaded_at = -_OVERRIDES_TTL


def effective() -> dict[tuple[str, str], tuple[str, str]]:
    """{(provider, model): (cheaper, "default" | "yours")}, the user's rows winning."""
    result = {key: (target, "default") for key, target in defaults().items()}
    result.update({key: (target, "yours") for key, target in _override_rows().items()})
    return dict(sorted(result.items()))


def cheaper(provider: str, model: str) -> str:
    """The model to send instead of `model`, or "" when there is none."""
    overrides = _override_rows()
    table = defaults()
    for name in pricing.candidates(model):
        key = (provider, name)
        if key in overrides:
            return overrides[key]
        if key in table:
            return table[key]
    return ""


def check(model: str, target: str, provider: str = "") -> tuple[str, str, str]:
    """(provider, model, cheaper) for a mapping the user asked for, or RouteError."""
    model, target = model.strip(), target.strip()
    prices = {}
    for name in (model, target):
        price = pricing.resolve(name, provider)
        if not name or price.source == "default":
            raise RouteError(
                f"unknown model {name!r}: the mapping takes models the pricing catalog or a "
                "price override knows (see `python manage.py sync_pricing`)"
            )
        prices[name] = price
    sides = {prices[model].provider or provider, prices[target].provider or provider}
    sides.discard("")
    if len(sides) > 1:
        raise RouteError(
            f"{model} and {target} belong to different providers ({' and '.join(sorted(sides))}):"
            " a request is only ever routed within its own provider"
        )
    if model == target:
        raise RouteError(f"{model} cannot be routed to itself")
    owner = sides.pop() if sides else provider
    if not owner:
        raise RouteError(f"say which provider {model} belongs to "
                         f"(--provider {'|'.join(settings.PROVIDERS)})")
    return owner, model, target
