"""The official OpenAI SDK, pointed at TokenPak, against the fake provider: what only OpenAI
does. What every provider does (JSON, streams, usage, errors, cuts) is the contract:
tests/contract.py."""

from __future__ import annotations

import json
from decimal import Decimal

import openai

from tests.fakeprovider import DEFAULT_TEXT

KEY = "sk-proj-TESTKEY0123456789abcdef"
MESSAGES = [{"role": "user", "content": "Say hello"}]


def client(server, **kwargs) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, **kwargs)


def test_it_sends_credentials_and_provider_headers_upstream_untouched(server, fake, rows):
    client(server, organization="org-abc", project="proj_xyz").chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        extra_headers={"X-TokenPak-Agent": "coder", "X-TokenPak-Session": "s-42"},
    )
    [received] = fake.log
    assert received.headers["authorization"] == f"Bearer {KEY}"
    assert received.headers["openai-organization"] == "org-abc"
    assert received.headers["openai-project"] == "proj_xyz"
    assert not [h for h in received.headers if h.startswith("x-tokenpak-")]
    assert received.json["messages"] == MESSAGES
    [event] = rows(1)
    assert (event.agent_id, event.session_id) == ("coder", "s-42")


def test_it_streams_without_asking_the_client_to_change_anything(server, fake, rows):
    stream = client(server).chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        stream=True,
        extra_headers={"x-fake-usage": json.dumps({"prompt_tokens": 50, "completion_tokens": 9})},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == DEFAULT_TEXT
    # The client did not ask for usage: it sees no usage chunk and no "usage": null.
    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)
    # ...but TokenPak asked upstream, so the ledger is exact.
    assert fake.log[0].json["stream_options"] == {"include_usage": True}
    [event] = rows(1)
    assert event.stream and event.status == "ok"
    assert (event.usage.input_tokens, event.usage.output_tokens) == (50, 9)
    assert event.usage_source == "provider"
    assert event.ttfb_ms is not None and event.ttfb_ms <= event.duration_ms


def test_it_strips_nothing_when_the_client_asked_for_usage_itself(server, fake, rows):
    stream = client(server).chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 7
    [event] = rows(1)
    assert event.usage.output_tokens == 7


def test_it_passes_embeddings_and_responses_through_with_their_usage(server, fake, rows):
    c = client(server)
    c.embeddings.create(model="text-embedding-3-small", input="hello")
    c.responses.create(
        model="gpt-5",
        input="hello",
        extra_headers={"x-fake-usage": json.dumps(
            {"input_tokens": 100, "output_tokens": 40,
             "output_tokens_details": {"reasoning_tokens": 30}})},
    )
    stream = c.responses.create(model="gpt-5", input="hello", stream=True)
    assert [e.type for e in stream][-1] == "response.completed"
    by_type = {}
    for e in rows(3):
        by_type.setdefault(e.event_type, []).append(e)
    [emb] = by_type["embeddings"]
    assert (emb.usage.input_tokens, emb.cost.cost_usd) == (21, Decimal("0.00000042"))
    plain, streamed = sorted(by_type["responses"], key=lambda e: e.stream)
    assert (plain.usage.input_tokens, plain.usage.output_tokens) == (100, 40)
    assert plain.usage.reasoning_tokens == 30
    # 100 × $1.25 + 40 × $10, per million
    assert plain.cost.cost_usd == Decimal("0.000525")
    assert streamed.status == "ok" and streamed.usage.output_tokens == 7



def test_it_records_and_prices_openai_cache_writes(server, fake, rows):
    # gpt-5.6 per million: $4 input, $0.40 cached, $5 cache write, $20 output (the catalog's).
    chat = {"prompt_tokens": 10_000, "completion_tokens": 100, "total_tokens": 10_100,
            "prompt_tokens_details": {"cached_tokens": 2_000, "cache_write_tokens": 3_000}}
    responses = {"input_tokens": 10_000, "output_tokens": 100, "total_tokens": 10_100,
                 "input_tokens_details": {"cached_tokens": 2_000, "cache_write_tokens": 3_000}}
    c = client(server)
    c.chat.completions.create(model="gpt-5.6", messages=MESSAGES,
                              extra_headers={"x-fake-usage": json.dumps(chat)})
    c.responses.create(model="gpt-5.6", input="hello",
                       extra_headers={"x-fake-usage": json.dumps(responses)})
    stream = c.chat.completions.create(model="gpt-5.6", messages=MESSAGES, stream=True,
                                       extra_headers={"x-fake-usage": json.dumps(chat)})
    assert "".join(chunk.choices[0].delta.content or "" for chunk in stream) == DEFAULT_TEXT
    events = rows(3)
    for event in events:
        assert (event.usage.input_tokens, event.usage.cache_read_tokens,
                event.usage.cache_write_tokens) == (10_000, 2_000, 3_000)
        # 5,000 fresh × $4 + 2,000 × $0.40 + 3,000 × $5 + 100 × $20, per million
        assert event.cost.cost_usd == Decimal("0.0378")
