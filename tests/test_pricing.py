"""telemetry.pricing: catalog, resolution, overrides and cost arithmetic.

Expected costs are worked out by hand from the catalog's figures (USD per MTok), shown in the
comments, so a change in the arithmetic or in the shipped prices fails loudly.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest
from django.db import DatabaseError, connection
from django.test.utils import CaptureQueriesContext

from telemetry import build_catalog, pricing
from telemetry.models import ModelPrice
from telemetry.pricing import DEFAULT_PRICE, Price, PricingError, cost, parse_litellm, resolve
from telemetry.usage import TokenUsage

LITELLM_SOURCE = Path("/tmp/dl/litellm/model_prices_and_context_window_backup.json")
D = Decimal


@pytest.fixture(autouse=True)
def fresh_cache():
    pricing.clear_cache()
    yield
    pricing.clear_cache()


def catalog_file() -> dict:
    return json.loads(pricing.CATALOG_PATH.read_text(encoding="utf-8"))


# --- The shipped catalog ---------------------------------------------------------------------


def test_it_ships_a_catalog_with_the_models_people_use():
    models = catalog_file()["models"]
    for name in (
        "claude-sonnet-4-6",
        "claude-sonnet-5",
        "claude-opus-4-7",
        "claude-haiku-4-5",
        "claude-sonnet-4-5",
        "gpt-5",
        "gpt-5.1",
        "gpt-5.2",
        "gpt-5.4",
        "gpt-5.5",
        "gpt-4o",
        "gpt-4o-mini",
        "gemini-2.5-pro",
    ):
        assert name in models, name


def test_it_ships_a_catalog_of_exact_decimal_strings():
    data = catalog_file()
    assert data["unit"] == "USD per 1M tokens"
    assert "litellm 1.109.1" in data["source"] and "MIT" in data["source"]
    assert {e["provider"] for e in data["models"].values()} == {"openai", "anthropic", "google"}
    for name, entry in data["models"].items():
        assert "/" not in name
        blocks = [entry] + ([entry["above_200k"]] if "above_200k" in entry else [])
        for block in blocks:
            for key in ("input", "output", "cache_read", "cache_write", "cache_write_1h"):
                value = block[key]
                if value is None:
                    assert key not in ("input", "output"), name
                    continue
                # No float noise and no exponent: "2.5", never "2.5000000000000004" or "1.5E+1".
                assert isinstance(value, str) and "e" not in value.lower(), (name, key, value)
                assert value == format(D(value).normalize(), "f"), (name, key, value)
                assert D(value) >= 0


@pytest.mark.skipif(not LITELLM_SOURCE.exists(), reason="LiteLLM source file not present")
def test_it_ships_exactly_what_build_catalog_makes_from_litellm():
    source = json.loads(LITELLM_SOURCE.read_text(encoding="utf-8"))
    assert catalog_file()["models"] == parse_litellm(source)


def test_it_builds_a_catalog_file_from_a_litellm_file(tmp_path, capsys):
    src = tmp_path / "litellm.json"
    src.write_text(json.dumps({"gpt-x": _spec("openai", 2.5e-06, 1e-05)}))
    out = tmp_path / "catalog.json"
    assert build_catalog.main([str(src), "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert list(data) == ["source", "unit", "generated", "models"]
    assert data["models"] == {
        "gpt-x": {
            "provider": "openai",
            "input": "2.5",
            "output": "10",
            "cache_read": None,
            "cache_write": None,
            "cache_write_1h": None,
        }
    }
    assert "1 models (openai 1)" in capsys.readouterr().out


def test_it_refuses_to_build_a_catalog_from_a_bad_file(tmp_path, capsys):
    src = tmp_path / "litellm.json"
    src.write_text(json.dumps({"gpt-x": _spec("openai", -1e-06, 1e-05)}))
    assert build_catalog.main([str(src), "--out", str(tmp_path / "out.json")]) == 1
    assert "negative" in capsys.readouterr().err
    assert not (tmp_path / "out.json").exists()


# --- parse_litellm ---------------------------------------------------------------------------


def _spec(provider: str, input: object, output: object, mode: str = "chat", **more: object):
    return {
        "litellm_provider": provider,
        "mode": mode,
        "input_cost_per_token": input,
        "output_cost_per_token": output,
        **more,
    }


@pytest.mark.parametrize(
    "per_token, per_mtok",
    [
        (2.5e-06, "2.5"),
        (1.5e-05, "15"),  # not "1.5E+1"
        (0.000168, "168"),
        (1.5625e-05, "15.625"),
        (7.5e-08, "0.075"),
        (5e-09, "0.005"),
        (0, "0"),
        (0.0, "0"),
        (3, "3000000"),
    ],
)
def test_it_converts_per_token_prices_to_exact_per_mtok_strings(per_token, per_mtok):
    assert pricing.per_mtok(per_token, "x") == per_mtok


def test_it_parses_every_price_field_and_the_long_context_tier():
    data = {
        "claude-x": _spec(
            "anthropic",
            3e-06,
            1.5e-05,
            cache_read_input_token_cost=3e-07,
            cache_creation_input_token_cost=3.75e-06,
            cache_creation_input_token_cost_above_1hr=6e-06,
            input_cost_per_token_above_200k_tokens=6e-06,
            output_cost_per_token_above_200k_tokens=2.25e-05,
        )
    }
    assert parse_litellm(data) == {
        "claude-x": {
            "provider": "anthropic",
            "input": "3",
            "output": "15",
            "cache_read": "0.3",
            "cache_write": "3.75",
            "cache_write_1h": "6",
            "above_200k": {
                "input": "6",
                "output": "22.5",
                "cache_read": None,
                "cache_write": None,
                "cache_write_1h": None,
            },
        }
    }


def test_it_keeps_only_priced_text_models_of_the_chosen_providers():
    data = {
        "sample_spec": {"litellm_provider": "one of https://...", "input_cost_per_token": 0.0},
        "gpt-x": _spec("openai", 1e-06, 2e-06),
        "text-embedding-x": _spec("openai", 2e-08, None, mode="embedding"),
        "dall-e-x": _spec("openai", 1e-06, 2e-06, mode="image_generation"),
        "gpt-realtime-x": _spec("openai", 1e-06, 2e-06, mode="realtime"),
        "openai/container": _spec("openai", None, None),
        "mistral/m": _spec("mistral", 1e-06, 2e-06),
        "gemini/gemini-x": _spec("gemini", 1e-06, 2e-06),
        "no-mode": {
            "litellm_provider": "anthropic",
            "input_cost_per_token": 1e-06,
            "output_cost_per_token": 2e-06,
        },
        "not-an-object": [1, 2],
    }
    parsed = parse_litellm(data)
    assert sorted(parsed) == ["gemini-x", "gpt-x", "no-mode", "text-embedding-x"]
    assert parsed["gemini-x"]["provider"] == "google"
    assert parsed["text-embedding-x"]["output"] == "0"
    assert sorted(parse_litellm(data, {"google"})) == ["gemini-x"]
    assert sorted(parse_litellm(data, {"mistral"})) == ["m"]


def test_it_prefers_the_unprefixed_key_when_stripping_a_prefix_collides():
    plain = _spec("gemini", 3e-07, 2.5e-06)
    prefixed = _spec("gemini", 0, 0)
    for data in (
        {"gemini-x": plain, "gemini/gemini-x": prefixed},
        {"gemini/gemini-x": prefixed, "gemini-x": plain},
    ):
        assert parse_litellm(data)["gemini-x"]["input"] == "0.3"


@pytest.mark.parametrize(
    "bad, message",
    [
        (-1e-06, "negative"),
        ("0.000001", "not a number"),
        (True, "not a number"),
        ({"usd": 1}, "not a number"),
        (float("nan"), "not a finite number"),
    ],
)
def test_it_rejects_negative_and_non_numeric_prices(bad, message):
    with pytest.raises(PricingError, match=message):
        parse_litellm({"gpt-x": _spec("openai", 1e-06, 2e-06, cache_read_input_token_cost=bad)})


# --- resolve ---------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    "model, priced_as, input",
    [
        ("gpt-4o", "gpt-4o", "2.5"),
        ("gpt-4o-2024-08-06", "gpt-4o-2024-08-06", "2.5"),  # in the catalog under its own name
        ("openai/gpt-4o", "gpt-4o", "2.5"),
        ("GPT-4o", "gpt-4o", "2.5"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini-2024-07-18", "0.15"),
        # A snapshot the catalog does not list: the date goes, "-mini" stays.
        ("gpt-4o-mini-2099-01-01", "gpt-4o-mini", "0.15"),
        ("openai/gpt-4o-mini-2099-01-01", "gpt-4o-mini", "0.15"),
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5-20250929", "3"),
        ("claude-sonnet-4-5@20250929", "claude-sonnet-4-5", "3"),
        ("anthropic/claude-sonnet-4-5", "claude-sonnet-4-5", "3"),
        ("claude-sonnet-4-6-20991231", "claude-sonnet-4-6", "3"),
        ("claude-haiku-4-5-latest", "claude-haiku-4-5", "1"),
        ("models/gemini-2.5-pro", "gemini-2.5-pro", "1.25"),
        ("gemini/gemini-2.5-pro", "gemini-2.5-pro", "1.25"),
    ],
)
def test_it_resolves_exact_dated_and_prefixed_names(model, priced_as, input):
    price = resolve(model)
    assert (price.source, price.priced_as, price.input) == ("catalog", priced_as, D(input))


@pytest.mark.django_db
@pytest.mark.parametrize(
    "model",
    ["gpt-4o-ultra", "gpt-4o-minix", "gpt-4o-mini-turbo", "claude-sonnet", "llama3:8b", ""],
)
def test_it_never_guesses_by_prefix(model):
    assert resolve(model) is DEFAULT_PRICE


def test_it_prices_unknown_models_at_three_and_fifteen_dollars():
    assert Price(
        input=D("3"),
        output=D("15"),
        cache_read=D("0.3"),
        cache_write=D("3.75"),
        cache_write_1h=D("6"),
        above_200k=None,
        source="default",
        priced_as="",
    ) == DEFAULT_PRICE


@pytest.mark.django_db
def test_it_fills_missing_cache_prices_by_provider():
    # OpenAI without a cached-input price: cached tokens bill at the input price.
    gpt35 = resolve("gpt-3.5-turbo")
    assert (gpt35.input, gpt35.cache_read) == (D("0.5"), D("0.5"))
    # Writes never happen on OpenAI, but the defaults are still well defined: 1.25x and 2x.
    assert (gpt35.cache_write, gpt35.cache_write_1h) == (D("0.625"), D("1.0"))
    # Long-context tier without its own cache-read price: Google's rule, so the tier's input.
    tier = resolve("gemini-2.5-computer-use-preview-10-2025").above_200k
    assert tier is not None and (tier.input, tier.cache_read) == (D("2.5"), D("2.5"))


# --- Overrides -------------------------------------------------------------------------------


def _override(model: str, input: str, output: str, **more: object) -> ModelPrice:
    return ModelPrice.objects.create(
        model=model, input_per_mtok=D(input), output_per_mtok=D(output), **more
    )


@pytest.mark.django_db
def test_it_lets_an_override_win_over_the_catalog():
    _override("gpt-4o", "1", "2")
    price = resolve("gpt-4o")
    assert (price.source, price.priced_as, price.input, price.output) == (
        "override",
        "gpt-4o",
        D("1"),
        D("2"),
    )
    # Found by the same normalisation, and preferred even to a dated catalog entry.
    assert resolve("openai/gpt-4o-2024-08-06").source == "override"
    assert resolve("gpt-4o-mini").source == "catalog"


@pytest.mark.django_db
def test_it_fills_an_overrides_missing_cache_prices_by_provider():
    _override("claude-in-house", "10", "50")
    _override("gpt-in-house", "10", "50", provider="openai")
    _override("mystery", "10", "50")
    claude = resolve("claude-in-house")
    assert (claude.cache_read, claude.cache_write, claude.cache_write_1h) == (
        D("1.0"),
        D("12.50"),
        D("20"),
    )
    assert resolve("gpt-in-house").cache_read == D("10")
    assert resolve("mystery").cache_read == D("10")
    assert resolve("mystery", provider="anthropic").cache_read == D("1.0")


@pytest.mark.django_db
def test_it_reads_overrides_from_the_database_at_most_every_five_seconds(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(pricing, "_monotonic", lambda: now[0])
    with CaptureQueriesContext(connection) as queries:
        for _ in range(1000):
            resolve("gpt-4o")
    # Inside the test's transaction the read is wrapped in a savepoint, hence filtering.
    reads = [q["sql"] for q in queries if "tp_pricing" in q["sql"]]
    assert len(reads) == 1
    # Another process (a second proxy worker) writes the row: no signal reaches this one.
    ModelPrice.objects.bulk_create(
        [ModelPrice(model="gpt-4o", input_per_mtok=D("1"), output_per_mtok=D("2"))]
    )
    now[0] += 4.9
    assert resolve("gpt-4o").source == "catalog"  # cached
    now[0] += 0.2
    assert resolve("gpt-4o").source == "override"


@pytest.mark.django_db
def test_it_sees_an_override_saved_in_this_process_at_once():
    assert resolve("gpt-4o").source == "catalog"
    price = _override("gpt-4o", "1", "2")  # post_save clears the cache
    assert resolve("gpt-4o").source == "override"
    price.delete()
    assert resolve("gpt-4o").source == "catalog"


def test_it_falls_back_to_the_catalog_when_tp_pricing_is_unreadable(monkeypatch):
    def broken():
        raise DatabaseError("no such table: tp_pricing")

    monkeypatch.setattr(ModelPrice.objects, "all", broken)
    assert resolve("gpt-4o").source == "catalog"


# --- cost ------------------------------------------------------------------------------------


def _catalog(model: str) -> Price:
    price = pricing.catalog_prices()[model]
    assert price.priced_as == model
    return price


COST_CASES = [
    pytest.param(
        # gpt-4o-mini: input 0.15, cached input 0.075, output 0.6 per MTok.
        # (12_345 - 6_144) x 0.15 = 930.15; 6_144 x 0.075 = 460.8; 789 x 0.6 = 473.4
        # 930.15 + 460.8 + 473.4 = 1864.35 / 1e6 = 0.00186435
        "gpt-4o-mini",
        TokenUsage(input_tokens=12_345, cache_read_tokens=6_144, output_tokens=789),
        "0.00186435",
        id="gpt-4o-mini-cached",
    ),
    pytest.param(
        # claude-sonnet-4-5: input 3, read 0.3, 5 min write 3.75, 1 h write 6, output 15.
        # Anthropic sent input 1_000, cache read 20_000, cache creation 5_000 (2_000 of it 1 h).
        # 1_000 x 3 = 3_000; 20_000 x 0.3 = 6_000; 3_000 x 3.75 = 11_250; 2_000 x 6 = 12_000;
        # 1_500 x 15 = 22_500; total 54_750 / 1e6 = 0.05475
        "claude-sonnet-4-5",
        TokenUsage.from_anthropic(
            {
                "input_tokens": 1_000,
                "cache_read_input_tokens": 20_000,
                "cache_creation_input_tokens": 5_000,
                "cache_creation": {
                    "ephemeral_5m_input_tokens": 3_000,
                    "ephemeral_1h_input_tokens": 2_000,
                },
                "output_tokens": 1_500,
            }
        ),
        "0.05475",
        id="claude-sonnet-4-5-reads-and-writes",
    ),
    pytest.param(
        # gpt-4o: input 2.5, output 10; reasoning tokens are already inside output_tokens.
        # 1_000 x 2.5 = 2_500; 300 x 10 = 3_000; 5_500 / 1e6 = 0.0055
        "gpt-4o",
        TokenUsage(input_tokens=1_000, output_tokens=300, reasoning_tokens=200),
        "0.0055",
        id="gpt-4o-reasoning-not-double-billed",
    ),
    pytest.param(
        # gemini-2.5-pro at exactly 200k input stays on the base tier (input 1.25, cached
        # 0.125, output 10): 150_000 x 1.25 = 187_500; 50_000 x 0.125 = 6_250;
        # 1_000 x 10 = 10_000; 203_750 / 1e6 = 0.20375
        "gemini-2.5-pro",
        TokenUsage(input_tokens=200_000, cache_read_tokens=50_000, output_tokens=1_000),
        "0.20375",
        id="gemini-2.5-pro-at-200k",
    ),
    pytest.param(
        # Above 200k the whole request moves to the long-context tier (input 2.5, cached 0.25,
        # output 15): 200_001 x 2.5 = 500_002.5; 50_000 x 0.25 = 12_500; 1_000 x 15 = 15_000;
        # 527_502.5 / 1e6 = 0.5275025
        "gemini-2.5-pro",
        TokenUsage(input_tokens=250_001, cache_read_tokens=50_000, output_tokens=1_000),
        "0.5275025",
        id="gemini-2.5-pro-above-200k",
    ),
    pytest.param(
        # 1 token at $0.15/MTok = 0.15 / 1e6 = 0.00000015 exactly, not 1.4999999999999999e-07.
        "gpt-4o-mini",
        TokenUsage(input_tokens=1),
        "0.00000015",
        id="one-token-exact",
    ),
    pytest.param(
        "gpt-4o-mini",
        TokenUsage(),
        "0",
        id="no-tokens",
    ),
]


@pytest.mark.parametrize("model, usage, expected", COST_CASES)
def test_it_costs_requests_from_catalog_prices(model, usage, expected):
    result = cost(usage, _catalog(model))
    assert result == D(expected)
    assert result.as_tuple().exponent == -9  # always 9 places, like Cost.cost_usd


@pytest.mark.django_db
def test_it_costs_an_unknown_model_at_the_default_price():
    # $3 input, $0.30 cached, $15 output: 1_000 x 3 = 3_000; 100 x 0.3 = 30;
    # 1_000 x 15 = 15_000; 18_030 / 1e6 = 0.01803
    usage = TokenUsage(input_tokens=1_100, cache_read_tokens=100, output_tokens=1_000)
    assert cost(usage, resolve("my-local-model")) == D("0.018030000")


@pytest.mark.django_db
def test_it_costs_with_an_override():
    _override("gpt-4o", "1", "2")
    # No cache-read price on the row, OpenAI model: cached tokens at the input price, $1.
    # 1_000 x 1 (incl. 400 cached) = 1_000; 500 x 2 = 1_000; 2_000 / 1e6 = 0.002
    usage = TokenUsage(input_tokens=1_000, cache_read_tokens=400, output_tokens=500)
    assert cost(usage, resolve("gpt-4o")) == D("0.002")


def _flat(per_mtok: str) -> Price:
    p = D(per_mtok)
    return Price(input=p, output=p, cache_read=p, cache_write=p, cache_write_1h=p)


@pytest.mark.parametrize(
    "usage, expected",
    [
        # $0.0005/MTok: 1 token = 0.0000000005 (half a nano-dollar), rounded half-even to 0.
        (TokenUsage(input_tokens=1), "0"),
        # 3 tokens = 1.5e-9 -> 2e-9; 5 tokens = 2.5e-9 -> 2e-9 (half to even).
        (TokenUsage(input_tokens=3), "0.000000002"),
        (TokenUsage(input_tokens=5), "0.000000002"),
        # Rounded once at the end: 0.5e-9 input + 0.5e-9 output = 1e-9, where rounding each
        # part first would give 0.
        (TokenUsage(input_tokens=1, output_tokens=1), "0.000000001"),
    ],
)
def test_it_rounds_once_half_even_to_a_nano_dollar(usage, expected):
    assert cost(usage, _flat("0.0005")) == D(expected)


def test_it_never_bills_negative_token_counts():
    # A 1 h count larger than all writes would make the 5 min part negative.
    usage = TokenUsage(input_tokens=10, cache_write_tokens=1, cache_write_1h_tokens=3)
    # 9 uncached + 0 five-minute + 3 one-hour tokens, all at $1: 12 / 1e6
    assert cost(usage, _flat("1")) == D("0.000012")
