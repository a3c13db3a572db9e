"""The official Anthropic SDK, pointed at TokenPak, against the fake provider."""

from __future__ import annotations

import asyncio
import json
import re
from decimal import Decimal

import anthropic
import httpx
import pytest

from tests.fakeprovider import DEFAULT_TEXT

KEY = "sk-ant-api03-TESTKEY0123456789abcdef"
MODEL = "claude-sonnet-4-6"
MESSAGES = [{"role": "user", "content": "Say hello"}]


def client(server, **kwargs) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key=KEY, max_retries=0, **kwargs)


def usage_header(**usage: object) -> dict[str, str]:
    return {"x-fake-usage": json.dumps(usage)}


def test_it_forwards_a_message_and_records_cache_tokens_exactly(server, fake, rows):
    reply = client(server).messages.create(
        model=MODEL,
        max_tokens=100,
        messages=MESSAGES,
        extra_headers=usage_header(
            input_tokens=100, cache_creation_input_tokens=2000,
            cache_read_input_tokens=10000, output_tokens=500,
        ),
    )
    assert reply.content[0].text == DEFAULT_TEXT
    [event] = rows(1)
    assert (event.provider, event.event_type, event.model, event.status) == (
        "anthropic", "messages", MODEL, "ok")
    assert event.request_id.startswith("req_fake_")
    u = event.usage
    assert (u.input_tokens, u.cache_write_tokens, u.cache_read_tokens, u.output_tokens) == (
        12100, 2000, 10000, 500)
    assert u.cache_hit
    # 100 × $3 + 2000 × $3.75 + 10000 × $0.30 + 500 × $15, per million
    assert event.cost.cost_usd == Decimal("0.0183")


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


def test_it_relays_stream_events_byte_for_byte(server, fake, rows):
    body = {"model": MODEL, "max_tokens": 10, "messages": MESSAGES, "stream": True}
    headers = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
    direct = httpx.post(fake.url + "/v1/messages", json=body, headers=headers).content
    proxied = httpx.post(server.url + "/v1/messages", json=body, headers=headers).content
    assert b"event: ping" in proxied

    def normalise(data: bytes) -> bytes:  # ids differ per response
        return re.sub(rb"(req|msg)_fake_?\w+", b"ID", data)

    assert normalise(proxied) == normalise(direct)
    rows(1)


@pytest.mark.parametrize("scenario", ["split=1", "split=5,crlf"])
def test_it_parses_streams_split_at_odd_byte_boundaries(server, fake, rows, scenario):
    with client(server).messages.stream(
        model=MODEL, max_tokens=100, messages=MESSAGES,
        extra_headers={"x-fake-scenario": scenario},
    ) as stream:
        assert stream.get_final_text() == DEFAULT_TEXT
    [event] = rows(1)
    assert (event.usage.input_tokens, event.usage.output_tokens, event.status) == (21, 7, "ok")


# Events: message_start, content_block_start, ping, delta "Hello", delta " from", then the cut:
# the connection lost mid-event, or a clean end of body without message_stop.
@pytest.mark.parametrize("scenario, message, error_class", [
    ("cut=5", "the connection to the provider was lost", "RemoteProtocolError"),
    ("end=5", "the provider ended the stream before it finished", "incomplete_stream"),
])
def test_it_records_a_cut_stream_with_exact_input_and_estimated_output(
        server, fake, rows, scenario, message, error_class):
    with pytest.raises(anthropic.APIStatusError, match=message), client(server).messages.stream(
        model=MODEL, max_tokens=100, messages=MESSAGES,
        extra_headers={"x-fake-scenario": scenario, **usage_header(input_tokens=321)},
    ) as stream:
        for _ in stream.text_stream:
            pass
    [event] = rows(1)
    assert (event.status, event.error_class) == ("stream_cut", error_class)
    assert event.usage_source == "estimated"
    assert event.usage.input_tokens == 321  # from message_start: exact
    assert event.usage.output_tokens == 2  # "Hello", " from" counted locally


# linger: the provider holds its body open after the error event, so the SDK, which raises on
# the event and closes, hangs up before the provider has ended.
@pytest.mark.parametrize("scenario", ["stream_error", "stream_error,linger=10"])
def test_it_records_an_error_event_inside_a_stream(server, fake, rows, scenario):
    overloaded = pytest.raises(anthropic.APIStatusError, match="Overloaded")
    with overloaded, client(server).messages.stream(
        model=MODEL, max_tokens=100, messages=MESSAGES,
        extra_headers={"x-fake-scenario": scenario},
    ) as stream:
        for _ in stream.text_stream:
            pass
    [event] = rows(1)
    assert (event.status, event.error_class) == ("error", "overloaded_error")


def test_it_passes_provider_errors_back_unchanged(server, fake, rows):
    with pytest.raises(anthropic.InternalServerError) as info:
        client(server).messages.create(
            model=MODEL, max_tokens=10, messages=MESSAGES,
            extra_headers={"x-fake-scenario": "status=529"},
        )
    assert info.value.status_code == 529
    assert info.value.body["error"]["type"] == "overloaded_error"
    [event] = rows(1)
    assert (event.status, event.upstream_status, event.error_class) == (
        "error", 529, "overloaded_error")


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


def test_it_works_with_the_async_client_and_the_anthropic_prefix(server, fake, rows):
    async def go() -> tuple[str, str]:
        c = anthropic.AsyncAnthropic(base_url=server.url + "/anthropic", api_key=KEY,
                                     max_retries=0)
        reply = await c.messages.create(model="claude-haiku-4-5", max_tokens=10,
                                        messages=MESSAGES)
        async with c.messages.stream(model="claude-haiku-4-5", max_tokens=10,
                                     messages=MESSAGES) as stream:
            text = await stream.get_final_text()
        await c.close()
        return reply.content[0].text, text

    assert asyncio.run(go()) == (DEFAULT_TEXT, DEFAULT_TEXT)
    assert [r.path for r in fake.log] == ["/v1/messages", "/v1/messages"]
    events = rows(2)
    # 21 × $1 + 7 × $5, per million
    assert [e.cost.cost_usd for e in events] == [Decimal("0.000056")] * 2


def test_it_passes_query_strings_through(server, fake, rows):
    httpx.post(
        server.url + "/v1/messages?beta=true",
        json={"model": MODEL, "max_tokens": 10, "messages": MESSAGES},
        headers={"x-api-key": KEY, "anthropic-version": "2023-06-01"},
    ).raise_for_status()
    assert fake.log[0].path == "/v1/messages?beta=true"
    rows(1)
