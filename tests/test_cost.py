"""Exact cost per row, through the proxy: one table, both providers, JSON and SSE.

Expected figures are worked out by hand from telemetry/data/pricing_catalog.json
(USD per million tokens): gpt-4o-mini 0.15 in / 0.075 cached / 0.60 out; gpt-4o 2.50 / 10;
claude-sonnet-4-6 3 in / 3.75 5-min write / 6 1-h write / 0.30 read / 15 out;
claude-sonnet-4-5 3 / 15; unknown models 3 / 15.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from decimal import Decimal

import httpx
import pytest

from telemetry.models import ModelPrice

OPENAI_HEADERS = {"authorization": "Bearer sk-test-cost-000000"}
ANTHROPIC_HEADERS = {"x-api-key": "sk-ant-test-cost-000000", "anthropic-version": "2023-06-01"}
MESSAGES = [{"role": "user", "content": "Say hello"}]  # 2 tokens in o200k and cl100k


@dataclass
class Case:
    provider: str
    stream: bool
    model: str
    usage: dict = field(default_factory=dict)
    scenario: str = ""
    cost: str = "0"
    pricing_source: str = "catalog"
    priced_as: str = ""
    status: str = "ok"
    tokens: tuple[int, int] = (0, 0)  # input, output as recorded
    estimated: bool = False


CACHED_OPENAI = {"prompt_tokens": 1200, "completion_tokens": 300,
                 "prompt_tokens_details": {"cached_tokens": 1000}}
CACHED_ANTHROPIC = {"input_tokens": 100, "cache_creation_input_tokens": 2000,
                    "cache_read_input_tokens": 10000, "output_tokens": 500}

CASES = {
    # 200 × 0.15 + 1000 × 0.075 + 300 × 0.60 = 285 µ$
    "openai json cached": Case("openai", False, "gpt-4o-mini", CACHED_OPENAI, cost="0.000285",
                               priced_as="gpt-4o-mini", tokens=(1200, 300)),
    "openai sse cached": Case("openai", True, "gpt-4o-mini", CACHED_OPENAI, cost="0.000285",
                              priced_as="gpt-4o-mini", tokens=(1200, 300)),
    # 100 × 3 + 2000 × 3.75 + 10000 × 0.30 + 500 × 15 = 18300 µ$
    "anthropic json cached": Case("anthropic", False, "claude-sonnet-4-6", CACHED_ANTHROPIC,
                                  cost="0.0183", priced_as="claude-sonnet-4-6",
                                  tokens=(12100, 500)),
    "anthropic sse cached": Case("anthropic", True, "claude-sonnet-4-6", CACHED_ANTHROPIC,
                                 cost="0.0183", priced_as="claude-sonnet-4-6",
                                 tokens=(12100, 500)),
    # 1000 × 3 + 1000 × 15 = 18000 µ$ at the default price
    "openai json unknown model": Case(
        "openai", False, "my-local-model", {"prompt_tokens": 1000, "completion_tokens": 1000},
        cost="0.018", pricing_source="default", tokens=(1000, 1000)),
    "anthropic sse unknown model": Case(
        "anthropic", True, "claude-mystery-9", {"input_tokens": 1000, "output_tokens": 1000},
        cost="0.018", pricing_source="default", tokens=(1000, 1000)),
    # Cut after "Hello", " from": input counted locally (2), output counted locally (2):
    # 2 × 0.15 + 2 × 0.60 = 1.5 µ$
    "openai sse cut": Case("openai", True, "gpt-4o-mini", scenario="cut=3", cost="0.0000015",
                           priced_as="gpt-4o-mini", status="stream_cut", tokens=(2, 2),
                           estimated=True),
    # message_start gave input 321 exactly; output 2 counted locally: 321 × 3 + 2 × 15 = 993 µ$
    "anthropic sse cut": Case("anthropic", True, "claude-sonnet-4-6", {"input_tokens": 321},
                              scenario="cut=5", cost="0.000993",
                              priced_as="claude-sonnet-4-6", status="stream_cut",
                              tokens=(321, 2), estimated=True),
    # Dated and prefixed names: 21 × 2.50 + 7 × 10 = 122.5 µ$; 21 × 3 + 7 × 15 = 168 µ$
    "openai dated name": Case("openai", False, "gpt-4o-2024-08-06", cost="0.0001225",
                              priced_as="gpt-4o-2024-08-06", tokens=(21, 7)),
    "openai prefixed name": Case("openai", True, "openai/gpt-4o", cost="0.0001225",
                                 priced_as="gpt-4o", tokens=(21, 7)),
    "anthropic dated name": Case("anthropic", False, "claude-sonnet-4-5-20250929",
                                 cost="0.000168", priced_as="claude-sonnet-4-5",
                                 tokens=(21, 7)),
}


def _send(url: str, case: Case) -> None:
    extra = {"x-fake-usage": json.dumps(case.usage)} if case.usage else {}
    if case.scenario:
        extra["x-fake-scenario"] = case.scenario
    if case.provider == "openai":
        httpx.post(url + "/v1/chat/completions", headers={**OPENAI_HEADERS, **extra}, json={
            "model": case.model, "messages": MESSAGES, "stream": case.stream})
    else:
        httpx.post(url + "/v1/messages", headers={**ANTHROPIC_HEADERS, **extra}, json={
            "model": case.model, "max_tokens": 50, "messages": MESSAGES, "stream": case.stream})


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_it_records_the_exact_cost(server, fake, rows, case):
    _send(server.url, case)
    [event] = rows(1)
    assert event.status == case.status
    assert (event.usage.input_tokens, event.usage.output_tokens) == case.tokens
    assert event.usage.estimated is case.estimated
    assert event.cost.cost_usd == Decimal(case.cost)
    assert event.cost.pricing_source == case.pricing_source
    if case.priced_as:
        # The catalog key that matched (a dated name may have its own entry).
        assert event.cost.priced_as in (case.priced_as, case.model)


def test_it_prices_with_a_database_override_over_the_catalog(start_server, fake, rows):
    ModelPrice.objects.create(model="gpt-4o-mini", provider="openai",
                              input_per_mtok=Decimal("1"), output_per_mtok=Decimal("2"))
    server = start_server()
    _send(server.url, Case("openai", False, "gpt-4o-mini-2024-07-18"))
    [event] = rows(1)
    # 21 × 1 + 7 × 2 = 35 µ$
    assert event.cost.cost_usd == Decimal("0.000035")
    assert (event.cost.pricing_source, event.cost.priced_as) == ("override", "gpt-4o-mini")
