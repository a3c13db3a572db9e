"""The official OpenAI SDK, pointed at TokenPak, against the fake provider."""

from __future__ import annotations

import asyncio
import json
import re
import threading
from decimal import Decimal

import httpx
import openai
import pytest

from tests.fakeprovider import DEFAULT_TEXT

KEY = "sk-proj-TESTKEY0123456789abcdef"
MESSAGES = [{"role": "user", "content": "Say hello"}]


def client(server, **kwargs) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, **kwargs)


def test_it_forwards_a_chat_completion_and_records_an_exact_row(server, fake, rows):
    reply = client(server).chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        extra_headers={
            "x-fake-usage": json.dumps(
                {"prompt_tokens": 1200, "completion_tokens": 300,
                 "prompt_tokens_details": {"cached_tokens": 1000}}
            )
        },
    )
    assert reply.choices[0].message.content == DEFAULT_TEXT
    assert reply.usage.prompt_tokens == 1200

    [event] = rows(1)
    assert (event.provider, event.event_type, event.model) == ("openai", "chat.completions",
                                                                "gpt-4o-mini")
    assert event.status == "ok" and event.upstream_status == 200 and not event.stream
    assert event.request_id.startswith("req_fake_")
    assert event.usage.input_tokens == 1200
    assert event.usage.cache_read_tokens == 1000 and event.usage.cache_hit
    assert event.usage.output_tokens == 300
    # 200 uncached × $0.15 + 1000 cached × $0.075 + 300 out × $0.60, per million
    assert event.cost.cost_usd == Decimal("0.000285000")
    assert event.cost.pricing_source == "catalog"
    assert event.usage_source == "provider"
    assert event.duration_ms > 0


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


def test_it_returns_provider_headers_and_a_trace_id(server, fake, rows):
    raw = client(server).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES
    )
    assert raw.headers["x-request-id"].startswith("req_fake_")
    assert raw.headers["x-ratelimit-remaining-requests"] == "99"
    [event] = rows(1)
    assert raw.headers["x-tokenpak-trace-id"] == event.trace_id


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


def test_it_relays_the_exact_bytes_of_a_stream_the_client_asked_usage_for(server, fake, rows):
    body = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True,
            "stream_options": {"include_usage": True}}
    headers = {"authorization": f"Bearer {KEY}"}
    direct = httpx.post(fake.url + "/v1/chat/completions", json=body, headers=headers).content
    proxied = httpx.post(server.url + "/v1/chat/completions", json=body, headers=headers).content

    def normalise(data: bytes) -> bytes:  # ids and timestamps differ per response
        data = re.sub(rb'"id":"[^"]*"', b'"id":""', data)
        return re.sub(rb'"created":\d+', b'"created":0', data)

    assert b'"usage":{' in proxied
    assert normalise(proxied) == normalise(direct)


def test_it_delivers_the_first_event_before_the_provider_sends_the_last(server, fake, rows):
    stream = client(server).chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        stream=True,
        extra_headers={"x-fake-scenario": "gate"},
    )
    try:
        first_content = next(c for c in stream if c.choices and c.choices[0].delta.content)
        assert first_content.choices[0].delta.content
        assert not fake.sent_last.is_set()
    finally:
        fake.release.set()
    rest = list(stream)
    assert rest
    assert fake.sent_last.wait(5)
    rows(1)


@pytest.mark.parametrize("split", [1, 7, 13])
def test_it_parses_streams_split_at_odd_byte_boundaries(server, fake, rows, split):
    stream = client(server).chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        stream=True,
        extra_headers={"x-fake-scenario": f"split={split},crlf"},
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream) == DEFAULT_TEXT
    [event] = rows(1)
    assert (event.usage.input_tokens, event.usage.output_tokens, event.status) == (21, 7, "ok")


# Two content chunks, then the cut: the connection lost mid-chunk, or a clean end of body
# without the usage chunk or [DONE].
@pytest.mark.parametrize("scenario, message, error_class", [
    ("cut=3", "the connection to the provider was lost", "RemoteProtocolError"),
    ("end=3", "the provider ended the stream before it finished", "incomplete_stream"),
])
def test_it_records_a_cut_stream_with_estimated_tokens(
        server, fake, rows, scenario, message, error_class):
    stream = client(server).chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        stream=True,
        extra_headers={"x-fake-scenario": scenario},
    )
    seen = []
    with pytest.raises(openai.APIError, match=f"TokenPak: {message}"):
        for chunk in stream:
            seen.append(chunk.choices[0].delta.content or "")
    [event] = rows(1)
    assert (event.status, event.error_class) == ("stream_cut", error_class)
    assert event.usage_source == "estimated" and event.usage.estimated
    # What the client saw was counted locally: two words ("Hello", " from") → 2 tokens.
    assert "".join(seen) == "Hello from"
    assert event.usage.output_tokens == 2
    assert event.usage.input_tokens > 0
    assert event.cost.cost_usd > 0


def test_it_passes_provider_errors_back_unchanged(server, fake, rows):
    with pytest.raises(openai.RateLimitError) as info:
        client(server).chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, extra_headers={"x-fake-scenario": "status=429"}
        )
    assert info.value.response.headers["retry-after"] == "7"
    assert info.value.body["type"] == "rate_limit_error"
    [event] = rows(1)
    assert (event.status, event.upstream_status, event.error_class) == (
        "error", 429, "rate_limit_error")
    assert event.cost.cost_usd == 0


def test_it_works_with_the_async_client_streaming_and_not(server, fake, rows):
    async def go() -> tuple[str, str]:
        async with openai.AsyncOpenAI(
            base_url=server.url + "/v1", api_key=KEY, max_retries=0
        ) as c:
            reply = await c.chat.completions.create(model="gpt-4o", messages=MESSAGES)
            stream = await c.chat.completions.create(model="gpt-4o", messages=MESSAGES,
                                                     stream=True)
            text = "".join([ch.choices[0].delta.content or "" async for ch in stream])
            return reply.choices[0].message.content, text

    assert asyncio.run(go()) == (DEFAULT_TEXT, DEFAULT_TEXT)
    events = rows(2)
    assert sorted(e.stream for e in events) == [False, True]
    # 21 in × $2.50 + 7 out × $10.00, per million
    assert {e.cost.cost_usd for e in events} == {Decimal("0.0001225")}


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


def test_it_passes_the_model_list_through(server, fake, rows):
    models = client(server).models.list()
    assert "gpt-4o-mini" in [m.id for m in models.data]
    assert fake.log[0].path == "/v1/models"
    [event] = rows(1)
    assert (event.event_type, event.provider, event.cost.cost_usd) == ("models", "openai", 0)


def test_it_answers_the_openai_prefixed_route(server, fake, rows):
    c = openai.OpenAI(base_url=server.url + "/openai/v1", api_key=KEY, max_retries=0)
    assert c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES).choices
    assert fake.log[0].path == "/v1/chat/completions"
    rows(1)


def test_it_leaves_one_row_per_request_under_concurrency(server, fake, rows):
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            c = client(server)
            for _ in range(5):
                c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(rows(40)) == 40
