"""route-cheap: which cheaper model answers instead of an expensive one.

Defaults are derived from the shipped pricing catalog, so a refreshed catalog brings its new
models along: an OpenAI model goes to its own `-mini` (gpt-4o → gpt-4o-mini, gpt-5.4-pro →
gpt-5.4-mini), else to its major version's (gpt-5.2 → gpt-5-mini); a Claude Opus or Sonnet to
the Haiku of its generation (the newest Haiku when its generation has none). Rows in
tp_budget_routes (CLI `budget route`, the admin) win. A request's model is matched under the
names pricing resolves it by (dated, prefixed, `-latest`): claude-sonnet-4-5-20250929 routes
like claude-sonnet-4-5.
"""

from __future__ import annotations

import re
import threading
import time
from functools import cache

from telemetry import pricing

# Older OpenAI models with no `-mini` of their own.
_OPENAI_EXTRA = {
    "gpt-4": "gpt-4o-mini",
    "gpt-4-turbo": "gpt-4o-mini",
    "gpt-4-1106-preview": "gpt-4o-mini",
    "gpt-3.5-turbo-16k": "gpt-4o-mini",
    "o1": "o4-mini",
    "o1-pro": "o4-mini",
    "chat-latest": "gpt-5-mini",
}
_OPENAI_SKIP = re.compile(r"^ft:|mini|nano|audio|search|embedding|realtime|transcribe|tts|image")
_OPENAI_TIER = re.compile(r"-(?:pro|max)$")
_OPENAI_MAJOR = re.compile(r"^(gpt-\d+)[.-]")
_CLAUDE = re.compile(r"^claude-(?P<family>[a-z]+)-(?P<major>\d+)(?:-(?P<minor>\d+))?$")
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


def _cheaper(a: pricing.Price, b: pricing.Price) -> bool:
    return b.input < a.input and b.output <= a.output


@cache
def defaults() -> dict[tuple[str, str], str]:
    """{(provider, model): cheaper model} derived from the catalog."""
    routes: dict[tuple[str, str], str] = {}
    openai = _base_names("openai")
    for name, price in openai.items():
        if _OPENAI_SKIP.search(name):
            continue
        stem = _OPENAI_TIER.sub("", name)
        major = _OPENAI_MAJOR.match(name)  # gpt-5.2 has no -mini of its own: gpt-5-mini
        family = f"{major[1]}-mini" if major else ""
        for target in (f"{name}-mini", f"{stem}-mini", family, _OPENAI_EXTRA.get(name, "")):
            if target in openai and _cheaper(price, openai[target]):
                routes[("openai", name)] = target
                break
    anthropic = _base_names("anthropic")
    haikus: dict[str, tuple[tuple[int, int], str]] = {}  # major → newest haiku of it
    for name in anthropic:
        m = _CLAUDE.match(name)
        if m and m["family"] == "haiku":
            version = (int(m["major"]), int(m["minor"] or 0))
            if m["major"] not in haikus or version > haikus[m["major"]][0]:
                haikus[m["major"]] = (version, name)
    if haikus:
        newest = max(haikus.values())[1]
        for name, price in anthropic.items():
            m = _CLAUDE.match(name)
            if not m or m["family"] == "haiku":
                continue
            target = haikus[m["major"]][1] if m["major"] in haikus else newest
            if _cheaper(price, anthropic[target]):
                routes[("anthropic", name)] = target
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
        raise RouteError(f"say which provider {model} belongs to (--provider openai|anthropic)")
    return owner, model, target
