"""The official Anthropic SDK, pointed at TokenPak, against the fake provider: what only Anthropic
does. What every provider does (JSON, streams, usage, errors, cuts) is the contract:
tests/contract.py."""

from __future__ import annotations

import json
from decimal import Decimal

import anthropic

from tests.fakeprovider import DEFAULT_TEXT

KEY = "sk-ant-api03-TESTKEY0123456789abcdef"
MODEL = "claude-sonnet-4-6"
MESSAGES = [{"role": "user", "content": "Say hello"}]


def client(server, **kwargs) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key=KEY, max_retries=0, **kwargs)


def usage_header(**usage: object) -> dict[str, str]:
    return {"x-fake-usage": json.dumps(usage)}


def test_it_prices_one_hour_cache_writes_at_twice_input(server, fake, rows):
    client(server).messages.create(
        model=MODEL,
        max_tokens=100,
        messages=MESSAGES,
        extra_headers=usage_header(
            input_tokens=10, cache_creation_input_tokens=3000, output_tokens=0,
            cache_creation={"ephemeral_5m_input_tokens": 1000, "ephemeral_1h_input_tokens": 2000},
        ),
    )
    [event] = rows(1)
    assert (event.usage.cache_write_tokens, event.usage.cache_write_1h_tokens) == (3000, 2000)
    # 10 × $3 + 1000 × $3.75 + 2000 × $6, per million
    assert event.cost.cost_usd == Decimal("0.01578")


def test_it_sends_either_auth_header_and_anthropic_headers_upstream(server, fake, rows):
    client(server).messages.create(
        model=MODEL, max_tokens=10, messages=MESSAGES,
        extra_headers={"anthropic-beta": "prompt-caching-2024-07-31", "X-TokenPak-Agent": "a1"},
    )
    anthropic.Anthropic(
        base_url=server.url, auth_token="oauth-token-xyz", max_retries=0
    ).messages.create(model=MODEL, max_tokens=10, messages=MESSAGES)
    first, second = fake.log
    sent_key = first.headers.get("x-api-key") or first.headers.get("authorization")
    assert KEY in sent_key
    assert first.headers["anthropic-version"]
    assert first.headers["anthropic-beta"] == "prompt-caching-2024-07-31"
    assert "x-tokenpak-agent" not in first.headers
    assert second.headers["authorization"] == "Bearer oauth-token-xyz"
    events = rows(2)
    assert [e.agent_id for e in events] == ["a1", ""]


def test_it_streams_and_keeps_the_latest_cumulative_output_count(server, fake, rows):
    with client(server).messages.stream(
        model=MODEL, max_tokens=100, messages=MESSAGES,
        extra_headers=usage_header(input_tokens=40, cache_read_input_tokens=60,
                                   output_tokens=25),
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == DEFAULT_TEXT
    assert final.usage.output_tokens == 25
    [event] = rows(1)
    assert event.stream and event.status == "ok" and event.usage_source == "provider"
    # message_start says output 1, message_delta says 25: the ledger keeps 25, not 26.
    assert (event.usage.input_tokens, event.usage.output_tokens) == (100, 25)
    assert event.usage.cache_read_tokens == 60
    # 40 × $3 + 60 × $0.30 + 25 × $15, per million
    assert event.cost.cost_usd == Decimal("0.000513")


def test_it_passes_count_tokens_and_models_through_at_no_cost(server, fake, rows):
    c = client(server)
    assert c.messages.count_tokens(model=MODEL, messages=MESSAGES).input_tokens == 21
    assert [m.id for m in c.models.list().data]
    assert [r.path for r in fake.log] == ["/v1/messages/count_tokens", "/v1/models"]
    events = rows(2)
    assert [(e.event_type, e.provider) for e in events] == [
        ("count_tokens", "anthropic"), ("models", "anthropic")]
    assert [e.cost.cost_usd for e in events] == [0, 0]
    assert [e.usage.input_tokens for e in events] == [0, 0]

