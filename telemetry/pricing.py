"""What a model costs, and what a request cost.

Prices are USD per million tokens, held as Decimal so a ledger of millions of rows sums exactly.
Three sources, in order of precedence:

1. overrides: rows in tp_pricing (telemetry.models.ModelPrice), edited in the admin or written
   by `manage.py sync_pricing`;
2. the shipped catalog, telemetry/data/pricing_catalog.json, generated from LiteLLM's price list
   by `python -m telemetry.build_catalog`;
3. DEFAULT_PRICE for a model neither knows ($3 / $15 per MTok).

Missing cache prices are filled in when a Price is built, never stored:

- cache_read: Anthropic 0.1x input (its published cache-hit rate). Everyone else (OpenAI,
  Google, unknown): the input price, because a provider whose discount we do not know may give
  none, and a ledger that over-reports is safer than one that under-reports.
- cache_write (5 min): 1.25x input; cache_write_1h: 2x input (Anthropic's multipliers; OpenAI and
  Google never report cache writes, so for them these never apply).

resolve() runs on the ledger writer thread for every row, so it never queries the database per
call: overrides are cached for OVERRIDE_TTL_SECONDS. Call it from synchronous code.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
from dataclasses import dataclass, replace
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from pathlib import Path
from typing import Any

from telemetry.usage import TokenUsage

log = logging.getLogger(__name__)

CATALOG_PATH = Path(__file__).resolve().parent / "data" / "pricing_catalog.json"
OVERRIDE_TTL_SECONDS = 5.0
LONG_CONTEXT_THRESHOLD = 200_000
# LiteLLM provider names imported by default, and the provider name TokenPak stores for each.
DEFAULT_LITELLM_PROVIDERS = frozenset({"openai", "anthropic", "gemini"})
PROVIDER_NAMES = {"gemini": "google"}
PRICED_MODES = frozenset({"chat", "completion", "responses", "embedding"})

_MTOK = Decimal(1_000_000)
_USD_STEP = Decimal("0.000000001")  # Cost.cost_usd has 9 decimal places
_ANTHROPIC_CACHE_READ = Decimal("0.1")
_CACHE_WRITE_5M = Decimal("1.25")
_CACHE_WRITE_1H = Decimal("2")

# Catalog keys: LiteLLM field per catalog field.
_LITELLM_FIELDS = {
    "input": "input_cost_per_token",
    "output": "output_cost_per_token",
    "cache_read": "cache_read_input_token_cost",
    "cache_write": "cache_creation_input_token_cost",
    "cache_write_1h": "cache_creation_input_token_cost_above_1hr",
}
_LITELLM_ABOVE_200K_FIELDS = {
    "input": "input_cost_per_token_above_200k_tokens",
    "output": "output_cost_per_token_above_200k_tokens",
    "cache_read": "cache_read_input_token_cost_above_200k_tokens",
    "cache_write": "cache_creation_input_token_cost_above_200k_tokens",
    "cache_write_1h": "cache_creation_input_token_cost_above_1hr_above_200k_tokens",
}

# Normalisation for resolve(). Deliberately strict: only these exact shapes are removed, and a
# name is never matched by prefix, so "gpt-4o-mini-2024-07-18" can only become "gpt-4o-mini".
_PROVIDER_PREFIX = re.compile(r"^(?:openai|anthropic|gemini|google|models)/")
_DATE_SUFFIX = re.compile(r"(?:-\d{4}-\d{2}-\d{2}|-\d{8}|@\d{8})$")
_LATEST_SUFFIX = re.compile(r"-latest$")


class PricingError(ValueError):
    """A price list entry TokenPak cannot use (negative or non-numeric price)."""


@dataclass(frozen=True)
class Price:
    """USD per million tokens. Cache prices are always filled in (see module docstring)."""

    input: Decimal
    output: Decimal
    cache_read: Decimal
    cache_write: Decimal
    cache_write_1h: Decimal
    above_200k: Price | None = None  # used for the whole request when input > 200k tokens
    source: str = "catalog"  # "catalog" | "override" | "default" (telemetry.models.PricingSource)
    priced_as: str = ""  # the catalog key or override model that matched; "" for the default
    provider: str = ""  # "openai", "anthropic", "google"; "" when unknown


def make_price(
    provider: str,
    input: Decimal,
    output: Decimal,
    cache_read: Decimal | None = None,
    cache_write: Decimal | None = None,
    cache_write_1h: Decimal | None = None,
    *,
    above_200k: Price | None = None,
    source: str = "catalog",
    priced_as: str = "",
) -> Price:
    """Build a Price, filling missing cache prices with the documented defaults."""
    if cache_read is None:
        cache_read = input * _ANTHROPIC_CACHE_READ if provider == "anthropic" else input
    return Price(
        input=input,
        output=output,
        cache_read=cache_read,
        cache_write=input * _CACHE_WRITE_5M if cache_write is None else cache_write,
        cache_write_1h=input * _CACHE_WRITE_1H if cache_write_1h is None else cache_write_1h,
        above_200k=above_200k,
        source=source,
        priced_as=priced_as,
        provider=provider,
    )


DEFAULT_PRICE = replace(
    make_price("anthropic", Decimal("3"), Decimal("15"), source="default", priced_as=""),
    provider="",
)


# --- LiteLLM's price list -------------------------------------------------------------------


def per_mtok(value: object, where: str) -> str | None:
    """A LiteLLM per-token USD number as an exact per-MTok decimal string ("2.5", not 2.5e-06)."""
    if value is None:
        return None
    # bool is an int subclass; `true` as a price is a broken file, not $1.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PricingError(f"{where}: price {value!r} is not a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise PricingError(f"{where}: price {value!r} is not a finite number")
    if value < 0:
        raise PricingError(f"{where}: price {value!r} is negative")
    # str() of a float is its shortest round-trip form, so 2.5e-06 becomes exactly 2.5.
    mtok = (Decimal(str(value)) * 10**6).normalize()
    return format(mtok, "f")


def parse_litellm(data: dict, providers: set[str] | None = None) -> dict[str, dict]:
    """Catalog-shaped entries from a LiteLLM model_prices_and_context_window.json object.

    providers are LiteLLM provider names (default openai, anthropic, gemini); "google" is taken as
    "gemini". Entries of other providers, of modes that are not priced per token (image, audio,
    ...) and without an input price are skipped; an entry without "mode" counts as chat, as in
    LiteLLM. Keys lose a "<provider>/" prefix; when that makes two keys collide, the one LiteLLM
    spelled without a prefix wins. Raises PricingError for a negative or non-numeric price.
    """
    wanted = DEFAULT_LITELLM_PROVIDERS if providers is None else frozenset(providers)
    wanted = frozenset("gemini" if p == "google" else p for p in wanted)
    models: dict[str, dict] = {}
    from_plain_key: set[str] = set()
    for key, spec in data.items():
        if not isinstance(spec, dict):
            continue
        litellm_provider = spec.get("litellm_provider")
        if litellm_provider not in wanted:
            continue
        if spec.get("mode", "chat") not in PRICED_MODES:
            continue
        entry = _litellm_entry(str(key), spec)
        if entry is None:
            continue
        name, plain = _strip_litellm_prefix(str(key), litellm_provider)
        if name in models and (name in from_plain_key or not plain):
            continue
        entry = {"provider": PROVIDER_NAMES.get(litellm_provider, litellm_provider), **entry}
        models[name] = entry
        if plain:
            from_plain_key.add(name)
    return dict(sorted(models.items()))


def _strip_litellm_prefix(key: str, litellm_provider: str) -> tuple[str, bool]:
    prefix = f"{litellm_provider}/"
    if key.startswith(prefix) and len(key) > len(prefix):
        return key[len(prefix) :], False
    return key, True


def _litellm_entry(key: str, spec: dict) -> dict | None:
    prices: dict[str, Any] = {
        field: per_mtok(spec.get(src), f"{key}.{src}") for field, src in _LITELLM_FIELDS.items()
    }
    if prices["input"] is None:
        return None
    if prices["output"] is None:
        # Embeddings have no output to bill; a chat model without an output price is unpriced.
        if spec.get("mode") != "embedding":
            return None
        prices["output"] = "0"
    above = {
        field: per_mtok(spec.get(src), f"{key}.{src}")
        for field, src in _LITELLM_ABOVE_200K_FIELDS.items()
    }
    if above["input"] is not None or above["output"] is not None:
        # A tier that only raises one side keeps the base price for the other.
        above["input"] = above["input"] or prices["input"]
        above["output"] = above["output"] or prices["output"]
        prices["above_200k"] = above
    return prices


# --- Resolution -----------------------------------------------------------------------------

_lock = threading.Lock()
_catalog: dict[str, Price] | None = None
_overrides: dict[str, _Override] | None = None
_overrides_loaded_at = 0.0
_override_error_logged = False
_monotonic = time.monotonic  # indirection so tests can move the clock


def clear_cache() -> None:
    """Forget the catalog and the overrides; the next resolve() reloads both.

    For tests, and after the admin or sync_pricing changes tp_pricing (otherwise a change shows
    within OVERRIDE_TTL_SECONDS anyway).
    """
    global _catalog, _overrides, _overrides_loaded_at
    with _lock:
        _catalog = None
        _overrides = None
        _overrides_loaded_at = 0.0


def candidates(model: str) -> list[str]:
    """The names a model is looked up under, most specific first."""
    names: list[str] = []

    def add(name: str) -> None:
        if name and name not in names:
            names.append(name)

    name = model.strip()
    add(name)
    name = name.lower()
    add(name)
    name = _PROVIDER_PREFIX.sub("", name)
    add(name)
    name = _DATE_SUFFIX.sub("", name)
    add(name)
    name = _LATEST_SUFFIX.sub("", name)
    add(name)
    return names


def resolve(model: str, provider: str = "") -> Price:
    """The price of `model`: an override under any of its names, else the catalog, else default.

    An override wins even over a more specific catalog entry (an override for
    "claude-sonnet-4-5" prices "claude-sonnet-4-5-20250929" too), because it is what the user
    asked for. provider ("openai", "anthropic", "google") only picks the cache_read default for
    an override row that names no provider.
    """
    names = candidates(model)
    overrides = _override_rows()
    for name in names:
        if name in overrides:
            return overrides[name].price(provider)
    catalog = catalog_prices()
    for name in names:
        if name in catalog:
            return catalog[name]
    return DEFAULT_PRICE


def resolve_cached(model: str, provider: str = "") -> Price | None:
    """resolve() without I/O, for the event loop: the overrides as last loaded, however old
    (a background thread keeps them fresh), or None when nothing is loaded yet."""
    overrides, catalog = _overrides, _catalog
    if overrides is None or catalog is None:
        return None
    names = candidates(model)
    for name in names:
        if name in overrides:
            return overrides[name].price(provider)
    for name in names:
        if name in catalog:
            return catalog[name]
    return DEFAULT_PRICE


def refresh() -> None:
    """Load the catalog and reload stale overrides, so resolve_cached() has them."""
    catalog_prices()
    _override_rows()


def catalog_prices() -> dict[str, Price]:
    global _catalog
    catalog = _catalog
    if catalog is not None:
        return catalog
    with _lock:
        if _catalog is None:
            _catalog = load_catalog(CATALOG_PATH)
        return _catalog


def load_catalog(path: Path) -> dict[str, Price]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        models = data["models"]
        return {name: _catalog_price(name, entry) for name, entry in models.items()}
    except (OSError, ValueError, KeyError, TypeError, ArithmeticError) as e:
        # Shipped data: a broken file is a packaging bug and must not pass for "unknown model".
        raise RuntimeError(f"pricing catalog {path} is unusable: {e}") from e


def _catalog_price(name: str, entry: dict[str, Any]) -> Price:
    provider = entry.get("provider", "")
    above = entry.get("above_200k")
    return make_price(
        provider,
        *_decimals(entry),
        above_200k=make_price(provider, *_decimals(above)) if above else None,
        source="catalog",
        priced_as=name,
    )


def _decimals(entry: dict[str, Any]) -> tuple[Decimal, Decimal, Any, Any, Any]:
    def dec(key: str) -> Decimal | None:
        value = entry.get(key)
        return None if value is None else Decimal(value)

    input_, output = dec("input"), dec("output")
    if input_ is None or output is None:
        raise ValueError("an entry has no input or output price")
    return input_, output, dec("cache_read"), dec("cache_write"), dec("cache_write_1h")


@dataclass(frozen=True)
class _Override:
    model: str
    provider: str
    input: Decimal
    output: Decimal
    cache_read: Decimal | None
    cache_write: Decimal | None
    cache_write_1h: Decimal | None

    def price(self, provider: str) -> Price:
        return make_price(
            _provider_of(self.provider or provider, self.model),
            self.input,
            self.output,
            self.cache_read,
            self.cache_write,
            self.cache_write_1h,
            source="override",
            priced_as=self.model,
        )


def _override_rows() -> dict[str, _Override]:
    global _overrides, _overrides_loaded_at
    overrides = _overrides
    if overrides is not None and _monotonic() - _overrides_loaded_at < OVERRIDE_TTL_SECONDS:
        return overrides
    with _lock:
        if _overrides is None or _monotonic() - _overrides_loaded_at >= OVERRIDE_TTL_SECONDS:
            loaded = _load_overrides()
            # On a database error keep serving the last good overrides rather than none.
            if loaded is not None or _overrides is None:
                _overrides = loaded or {}
            _overrides_loaded_at = _monotonic()
        return _overrides


def _load_overrides() -> dict[str, _Override] | None:
    global _override_error_logged
    from django.conf import settings
    from django.db import DatabaseError, connections, transaction

    from telemetry.models import ModelPrice

    if not getattr(settings, "TELEMETRY_ENABLED", True):
        return {}  # no database file: tp_pricing does not exist
    try:
        query = ModelPrice.objects.all()
        if connections[query.db].in_atomic_block:
            # A failed read inside the caller's transaction must not poison it: use a savepoint.
            # Outside one, a plain read avoids BEGIN IMMEDIATE taking SQLite's write lock.
            with transaction.atomic(using=query.db):
                rows = list(query)
        else:
            rows = list(query)
    except DatabaseError as e:
        # Retried every OVERRIDE_TTL_SECONDS; say so once, not every 5 s.
        level = logging.DEBUG if _override_error_logged else logging.WARNING
        log.log(level, "pricing overrides unavailable (tp_pricing unreadable): %s", e)
        _override_error_logged = True
        return None
    _override_error_logged = False
    overrides: dict[str, _Override] = {}
    for row in rows:
        override = _Override(
            model=row.model,
            provider=row.provider,
            input=row.input_per_mtok,
            output=row.output_per_mtok,
            cache_read=row.cache_read_per_mtok,
            cache_write=row.cache_write_per_mtok,
            cache_write_1h=row.cache_write_1h_per_mtok,
        )
        overrides[row.model] = override
        overrides.setdefault(row.model.lower(), override)
    return overrides


def _provider_of(provider: str, model: str) -> str:
    provider = provider.lower()
    if provider:
        return PROVIDER_NAMES.get(provider, provider)
    # An admin row without a provider: Claude models are the only ones whose default differs.
    return "anthropic" if "claude" in model.lower() else ""


# --- Cost -----------------------------------------------------------------------------------


def cost(usage: TokenUsage, price: Price) -> Decimal:
    """USD for one request, exact to 1e-9 (rounded half-even once, at the end)."""
    if price.above_200k is not None and usage.input_tokens > LONG_CONTEXT_THRESHOLD:
        # Anthropic and Google bill the whole request at the long-context rate, not the excess.
        price = price.above_200k
    # Counts can arrive inconsistent (an estimate, a provider quirk); never bill negative tokens.
    uncached = max(0, usage.uncached_input_tokens)
    read = max(0, usage.cache_read_tokens)
    write_5m = max(0, usage.cache_write_5m_tokens)
    write_1h = max(0, usage.cache_write_1h_tokens)
    output = max(0, usage.output_tokens)
    with localcontext() as ctx:
        ctx.prec = 60  # far beyond any token count x price, so only the final quantize rounds
        total = (
            uncached * price.input
            + read * price.cache_read
            + write_5m * price.cache_write
            + write_1h * price.cache_write_1h
            + output * price.output
        )
        return (total / _MTOK).quantize(_USD_STEP, rounding=ROUND_HALF_EVEN)


def saved_cost(
    usage: TokenUsage, price: Price, saved_prior: int, saved_new: int, new_after: int
) -> Decimal:
    """What the tokens compression removed would have cost, at the rate each would have had.

    Saved tokens in messages the previous request already carried would have been cache reads,
    as far as the provider's cache_read_tokens covers that history (a saving on a cache hit is
    worth a tenth). Saved tokens in new messages would have been written to the cache when this
    request wrote to it, and plain input otherwise. `new_after` is the new messages' tokens as
    sent, which tells how much of the input is history.
    """
    if price.above_200k is not None and usage.input_tokens > LONG_CONTEXT_THRESHOLD:
        price = price.above_200k
    prior, new = max(0, saved_prior), max(0, saved_new)
    with localcontext() as ctx:
        ctx.prec = 60
        history = max(1, usage.input_tokens - new_after)
        covered = min(Decimal(1), Decimal(max(0, usage.cache_read_tokens)) / history)
        prior_rate = covered * price.cache_read + (1 - covered) * price.input
        writes = max(0, usage.cache_write_tokens)
        if writes:
            write_1h = min(writes, max(0, usage.cache_write_1h_tokens))
            new_rate = ((writes - write_1h) * price.cache_write
                        + write_1h * price.cache_write_1h) / writes
        else:
            new_rate = price.input
        total = prior * prior_rate + new * new_rate
        return (total / _MTOK).quantize(_USD_STEP, rounding=ROUND_HALF_EVEN)
