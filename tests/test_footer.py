"""The stats footer: TokenPak's savings line at the end of each answer, as the SDKs see it."""

from __future__ import annotations

import asyncio
import json
import re
from decimal import Decimal

import anthropic
import httpx
import openai
import pytest
from asgiref.sync import sync_to_async
from django.db import connections

from proxy import footer
from proxy.footer import format_footer
from proxy.providers.anthropic import AnthropicFooter, add_to_message
from proxy.providers.openai import OpenAIChatFooter, add_to_chat_completion
from telemetry import pricing
from telemetry.models import ModelPrice
from telemetry.record import Record
from tests.conftest import _server_env
from tests.fakeprovider import DEFAULT_TEXT, TOOL_ARGUMENTS
from tests.live import LiveServer

OPENAI_KEY = "sk-proj-TESTKEY0123456789abcdef"
ANTHROPIC_KEY = "sk-ant-api03-TESTKEY0123456789abcdef"
MODEL = "claude-sonnet-4-6"
MESSAGES = [{"role": "user", "content": "Say hello"}]
# Compression does not exist yet: every request saves nothing, and says so.
FOOTER = "⚡ TokenPak: -0 tokens (0.0%) | $0.000 saved"
ANSWER = DEFAULT_TEXT + "\n\n" + FOOTER


@pytest.fixture(scope="module")
def _footer_server(django_db_setup, django_db_blocker, fake_provider, tmp_path_factory):
    # One server for the module, like the shared `server`: a server start per test is slow.
    with django_db_blocker.unblock():
        env = _server_env(fake_provider, TOKENPAK_STATS_FOOTER="1")
    server = LiveServer(env, tmp_path_factory.mktemp("footer") / "home").start()
    yield server
    server.stop()


@pytest.fixture
def footer_server(_footer_server, transactional_db, fake) -> LiveServer:
    """A server with the footer on, an empty ledger and an empty provider log for each test."""
    return _footer_server


def oai(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=OPENAI_KEY, max_retries=0)


def ant(server) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key=ANTHROPIC_KEY, max_retries=0)


def scenario(value: str) -> dict[str, str]:
    return {"x-fake-scenario": value} if value else {}


# --- The line itself ------------------------------------------------------------------------


def test_it_formats_savings_with_thousands_separators_one_decimal_and_dollars():
    line = format_footer(3349, 8249, Decimal("15"))
    assert line == "⚡ TokenPak: -3,349 tokens (40.6%) | $0.050 saved"
    assert format_footer(1_234_567, 2_000_000, Decimal("2.5")) == (
        "⚡ TokenPak: -1,234,567 tokens (61.7%) | $3.086 saved")


def test_it_formats_a_request_that_saved_nothing():
    assert format_footer(0, 0, Decimal("3")) == FOOTER
    assert format_footer(0, 5000, Decimal("3")) == FOOTER
    # Compression never grows a request; if a figure ever said so, no "--12" reaches the user.
    assert format_footer(-12, 100, Decimal("3")) == FOOTER


def test_it_prices_the_savings_at_the_input_price_of_the_model_sent(transactional_db):
    pricing.clear_cache()
    rec = Record(trace_id="t", provider="openai", event_type="chat.completions", endpoint="/",
                 ts=0.0, requested_model="gpt-4o", sent_model="o1",
                 tokens_before=8249, tokens_saved=3349)
    # o1 costs $15 per million input tokens in the shipped catalog.
    line = asyncio.run(footer.text_for(rec, "openai"))
    assert line == "⚡ TokenPak: -3,349 tokens (40.6%) | $0.050 saved"

    # An override wins, and it is read from the database without blocking the event loop.
    ModelPrice.objects.create(model="o1", input_per_mtok=Decimal("30"),
                              output_per_mtok=Decimal("60"))
    pricing.clear_cache()
    try:
        assert asyncio.run(footer.text_for(rec, "openai")).endswith("| $0.100 saved")
        rec.sent_model = ""  # nothing sent yet: the model the client asked for
        assert asyncio.run(footer.text_for(rec, "openai")).endswith("| $0.008 saved")
    finally:
        pricing.clear_cache()
        # The price was read on asgiref's worker thread: close its connection, or PostgreSQL
        # would refuse to drop the test database at the end of the run.
        asyncio.run(sync_to_async(connections.close_all)())


def test_it_needs_no_price_when_nothing_was_saved():
    # No database here: a request that saved nothing must not need one.
    rec = Record(trace_id="t", provider="anthropic", event_type="messages", endpoint="/", ts=0.0,
                 sent_model=MODEL)
    assert asyncio.run(footer.text_for(rec, "anthropic")) == FOOTER


# --- JSON answers, through the proxy ---------------------------------------------------------


def test_it_ends_an_openai_chat_completion_with_the_footer(footer_server, fake, rows):
    reply = oai(footer_server).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert reply.choices[0].message.content == ANSWER
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.prompt_tokens == 21 and reply.usage.completion_tokens == 7
    # The ledger keeps what the provider reported: the footer is not billed to anyone.
    [event] = rows(1)
    assert (event.status, event.usage_source) == ("ok", "provider")
    assert (event.usage.input_tokens, event.usage.output_tokens) == (21, 7)
    assert (event.usage.tokens_saved, event.tokens_saved) == (0, 0)
    # 21 in × $0.15 + 7 out × $0.60, per million
    assert event.cost.cost_usd == Decimal("0.00000735")


def test_it_ends_an_anthropic_message_with_the_footer(footer_server, fake, rows):
    reply = ant(footer_server).messages.create(model=MODEL, max_tokens=100, messages=MESSAGES)
    assert reply.content[-1].type == "text" and reply.content[-1].text == ANSWER
    assert reply.stop_reason == "end_turn"
    [event] = rows(1)
    assert (event.usage.input_tokens, event.usage.output_tokens) == (21, 7)


def test_it_leaves_every_other_field_of_a_json_answer_as_it_was(footer_server, fake, rows):
    body = {"model": "gpt-4o-mini", "messages": MESSAGES}
    headers = {"authorization": f"Bearer {OPENAI_KEY}"}
    direct = httpx.post(fake.url + "/v1/chat/completions", json=body, headers=headers).json()
    response = httpx.post(footer_server.url + "/v1/chat/completions", json=body,
                          headers=headers)
    proxied = response.json()
    assert "⚡".encode() in response.content  # UTF-8, not \\u26a1
    assert proxied["choices"][0]["message"].pop("content") == ANSWER
    del direct["choices"][0]["message"]["content"]
    for answer in (direct, proxied):  # ids and timestamps differ per response
        del answer["id"], answer["created"]
    assert proxied == direct
    assert list(proxied) == list(direct)  # same keys, same order
    rows(1)


# --- Streams, through the proxy ---------------------------------------------------------------


@pytest.mark.parametrize("knobs", ["", "split=7", "crlf", "split=7,crlf"])
def test_it_streams_the_footer_as_the_last_openai_content_delta(footer_server, fake, rows, knobs):
    chunks = list(oai(footer_server).chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True, extra_headers=scenario(knobs)))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == ANSWER
    # One more content delta, just before the chunk that finishes the answer.
    assert chunks[-2].choices[0].delta.content == "\n\n" + FOOTER
    assert chunks[-2].choices[0].finish_reason is None
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert len({c.id for c in chunks}) == 1 and len({c.created for c in chunks}) == 1
    # TokenPak asked for usage upstream; the client, who did not, still sees none of it.
    assert all(c.choices and c.usage is None for c in chunks)
    [event] = rows(1)
    assert event.status == "ok"
    assert (event.usage.input_tokens, event.usage.output_tokens) == (21, 7)


def test_it_keeps_the_usage_chunk_last_when_the_client_asked_for_it(footer_server, fake, rows):
    with oai(footer_server).chat.completions.stream(
        model="gpt-4o-mini", messages=MESSAGES, stream_options={"include_usage": True},
    ) as stream:
        completion = stream.get_final_completion()
    assert completion.choices[0].message.content == ANSWER
    assert completion.usage.completion_tokens == 7
    rows(1)


@pytest.mark.parametrize("knobs", ["", "split=7", "crlf", "split=7,crlf", "late_ping"])
def test_it_streams_the_footer_as_the_last_anthropic_text_delta(footer_server, fake, rows, knobs):
    with ant(footer_server).messages.stream(
        model=MODEL, max_tokens=100, messages=MESSAGES, extra_headers=scenario(knobs),
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == ANSWER
    assert final.content[-1].text == ANSWER
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 7
    [event] = rows(1)
    assert event.status == "ok"
    assert (event.usage.input_tokens, event.usage.output_tokens) == (21, 7)


def _without(data: bytes, event: bytes) -> bytes:
    assert data.count(event) == 1
    return data.replace(event, b"")


def _normalise(data: bytes) -> bytes:  # ids and timestamps differ per response
    data = re.sub(rb'"id":"[^"]*"', b'"id":""', data)
    data = re.sub(rb"(req|msg)_fake_?\w+", b"ID", data)
    return re.sub(rb'"created":\d+', b'"created":0', data)


def test_it_adds_exactly_one_openai_chunk_in_the_providers_line_endings(
    footer_server, fake, rows
):
    body = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True,
            "stream_options": {"include_usage": True}}
    headers = {"authorization": f"Bearer {OPENAI_KEY}", "x-fake-scenario": "crlf"}
    direct = httpx.post(fake.url + "/v1/chat/completions", json=body, headers=headers).content
    proxied = httpx.post(footer_server.url + "/v1/chat/completions", json=body,
                         headers=headers).content
    chunk = re.search(rb"data: [^\r\n]*TokenPak[^\r\n]*\r\n\r\n", proxied)
    assert chunk is not None
    payload = json.loads(chunk.group()[len(b"data: "):])
    assert payload["object"] == "chat.completion.chunk" and payload["model"] == "gpt-4o-mini"
    assert payload["system_fingerprint"] == "fp_fake" and payload["usage"] is None
    assert payload["choices"] == [
        {"index": 0, "delta": {"content": "\n\n" + FOOTER}, "finish_reason": None}]
    assert _normalise(_without(proxied, chunk.group())) == _normalise(direct)
    rows(1)


def test_it_adds_exactly_one_anthropic_event_before_the_held_block_stop(
    footer_server, fake, rows
):
    body = {"model": MODEL, "max_tokens": 10, "messages": MESSAGES, "stream": True}
    headers = {"x-api-key": ANTHROPIC_KEY, "anthropic-version": "2023-06-01"}
    direct = httpx.post(fake.url + "/v1/messages", json=body, headers=headers).content
    proxied = httpx.post(footer_server.url + "/v1/messages", json=body, headers=headers).content
    delta = {"type": "content_block_delta", "index": 0,
             "delta": {"type": "text_delta", "text": "\n\n" + FOOTER}}
    added = b"event: content_block_delta\ndata: " + json.dumps(
        delta, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"
    assert added + b"event: content_block_stop\n" in proxied
    assert _normalise(_without(proxied, added)) == _normalise(direct)
    rows(1)


# --- Answers that get no footer ---------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_it_adds_nothing_to_an_openai_tool_call(footer_server, fake, rows, stream):
    headers = scenario("tool_call")
    if stream:
        with oai(footer_server).chat.completions.stream(
            model="gpt-4o-mini", messages=MESSAGES, extra_headers=headers
        ) as events:
            reply = events.get_final_completion()
    else:
        reply = oai(footer_server).chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, extra_headers=headers)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert json.loads(choice.message.tool_calls[0].function.arguments) == TOOL_ARGUMENTS
    rows(1)


@pytest.mark.parametrize("stream", [False, True])
def test_it_adds_nothing_to_an_anthropic_tool_use(footer_server, fake, rows, stream):
    c, headers = ant(footer_server), scenario("tool_call")
    if stream:
        with c.messages.stream(model=MODEL, max_tokens=100, messages=MESSAGES,
                               extra_headers=headers) as events:
            reply = events.get_final_message()
    else:
        reply = c.messages.create(model=MODEL, max_tokens=100, messages=MESSAGES,
                                  extra_headers=headers)
    assert reply.stop_reason == "tool_use"
    text, call = reply.content
    # The text before the call is not the end of the answer: it stays the provider's.
    assert text.text == DEFAULT_TEXT
    assert call.type == "tool_use" and call.input == TOOL_ARGUMENTS
    rows(1)


def test_it_adds_nothing_when_the_setting_is_off(server, fake, rows):
    o, a = oai(server), ant(server)
    assert o.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES).choices[0].message.content == DEFAULT_TEXT
    stream = o.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream) == DEFAULT_TEXT
    assert a.messages.create(
        model=MODEL, max_tokens=10, messages=MESSAGES).content[-1].text == DEFAULT_TEXT
    with a.messages.stream(model=MODEL, max_tokens=10, messages=MESSAGES) as events:
        assert events.get_final_message().content[-1].text == DEFAULT_TEXT
    rows(4)


@pytest.mark.parametrize("stream", [False, True])
def test_it_passes_errors_through_untouched(footer_server, fake, rows, stream):
    requests = [
        ("/v1/chat/completions", {"model": "gpt-4o-mini", "messages": MESSAGES},
         {"authorization": f"Bearer {OPENAI_KEY}"}),
        ("/v1/messages", {"model": MODEL, "max_tokens": 10, "messages": MESSAGES},
         {"x-api-key": ANTHROPIC_KEY, "anthropic-version": "2023-06-01"}),
    ]
    for path, body, headers in requests:
        body, headers = {**body, "stream": stream}, {**headers, **scenario("status=500")}
        direct = httpx.post(fake.url + path, json=body, headers=headers)
        proxied = httpx.post(footer_server.url + path, json=body, headers=headers)
        assert proxied.status_code == 500
        assert _normalise(proxied.content) == _normalise(direct.content)
        assert b"TokenPak" not in proxied.content
    assert [e.status for e in rows(2)] == ["error", "error"]


def test_it_adds_nothing_to_other_routes(footer_server, fake, rows):
    o = oai(footer_server)
    assert o.responses.create(model="gpt-5", input="hello").output_text == DEFAULT_TEXT
    events = list(o.responses.create(model="gpt-5", input="hello", stream=True))
    assert events[-1].response.output_text == DEFAULT_TEXT
    assert ant(footer_server).messages.count_tokens(model=MODEL, messages=MESSAGES).input_tokens
    rows(3)


def test_it_releases_a_held_block_stop_when_the_stream_is_cut(footer_server, fake, rows):
    # Events: message_start, content_block_start, ping, 5 deltas, content_block_stop, then
    # half a message_delta: the stop the footer held must still reach the client.
    body = {"model": MODEL, "max_tokens": 10, "messages": MESSAGES, "stream": True}
    headers = {"x-api-key": ANTHROPIC_KEY, "anthropic-version": "2023-06-01",
               "x-fake-scenario": "cut=9"}
    proxied = httpx.post(footer_server.url + "/v1/messages", json=body, headers=headers).text
    names = re.findall(r"^event: (\w+)$", proxied, re.MULTILINE)
    assert names[-2:] == ["content_block_stop", "error"]
    assert "TokenPak: -" not in proxied
    [event] = rows(1)
    assert event.status == "stream_cut"


# --- The async clients --------------------------------------------------------------------------


def test_it_works_with_the_async_clients_streaming_and_not(footer_server, fake, rows):
    async def go() -> list[str]:
        async with (
            openai.AsyncOpenAI(base_url=footer_server.url + "/v1", api_key=OPENAI_KEY,
                               max_retries=0) as o,
            anthropic.AsyncAnthropic(base_url=footer_server.url, api_key=ANTHROPIC_KEY,
                                     max_retries=0) as a,
        ):
            reply = await o.chat.completions.create(model="gpt-4o", messages=MESSAGES)
            stream = await o.chat.completions.create(model="gpt-4o", messages=MESSAGES,
                                                     stream=True)
            streamed = "".join([c.choices[0].delta.content or "" async for c in stream])
            message = await a.messages.create(model=MODEL, max_tokens=10, messages=MESSAGES)
            async with a.messages.stream(model=MODEL, max_tokens=10,
                                         messages=MESSAGES) as events:
                final = await events.get_final_message()
            return [reply.choices[0].message.content, streamed, message.content[-1].text,
                    final.content[-1].text]

    assert asyncio.run(go()) == [ANSWER] * 4
    rows(4)


# --- The stream rewrites, event by event -----------------------------------------------------


def _sse(payload: dict, name: str = "") -> bytes:
    head = f"event: {name}\n".encode() if name else b""
    return head + b"data: " + json.dumps(payload).encode() + b"\n\n"


def _chunk(delta: dict, finish: str | None = None, **extra) -> bytes:
    return _sse({"id": "c1", "object": "chat.completion.chunk", "model": "m",
                 "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra})


def _contents(out: bytes) -> list[str | None]:
    return [choice["delta"].get("content")
            for line in out.splitlines() if line.startswith(b"data: {")
            for choice in json.loads(line[6:])["choices"]]


def test_it_joins_the_footer_to_last_words_sent_with_the_finish():
    # Some OpenAI-compatible servers send the last words in the finishing chunk.
    tap = OpenAIChatFooter("F")
    assert tap.relay(_chunk({"content": "Hi"})) == _chunk({"content": "Hi"})
    out = tap.relay(_chunk({"content": " there"}, "stop", usage={"total_tokens": 3}))
    assert _contents(out) == [" there\n\nF"]
    assert json.loads(out[6:])["usage"] == {"total_tokens": 3}


def test_it_keeps_usage_on_the_providers_chunk_only():
    tap = OpenAIChatFooter("F")
    tap.relay(_chunk({"role": "assistant", "content": ""}))
    out = tap.relay(_chunk({}, "length", usage={"total_tokens": 3}))
    footer_chunk, finish_chunk = out.split(b"\n\n", 1)
    assert json.loads(footer_chunk[6:])["usage"] is None
    assert finish_chunk == _chunk({}, "length", usage={"total_tokens": 3})


def test_it_adds_nothing_to_a_choice_that_finishes_with_tool_calls_or_never_had_text():
    tap = OpenAIChatFooter("F")
    tap.relay(_chunk({"role": "assistant", "content": "Let me look."}))
    assert tap.relay(_chunk({}, "tool_calls")) == _chunk({}, "tool_calls")
    refusal = OpenAIChatFooter("F")
    refusal.relay(_chunk({"role": "assistant", "content": None, "refusal": "No."}))
    assert refusal.relay(_chunk({}, "stop")) == _chunk({}, "stop")


def test_it_ends_each_text_choice_of_a_multi_choice_stream():
    tap = OpenAIChatFooter("F")
    two = {"id": "c1", "object": "chat.completion.chunk", "choices": [
        {"index": 0, "delta": {"content": "a"}, "finish_reason": None},
        {"index": 1, "delta": {"content": "b"}, "finish_reason": None}]}
    tap.relay(_sse(two))
    for choice in two["choices"]:
        choice["delta"], choice["finish_reason"] = {}, "stop"
    out = tap.relay(_sse(two))
    assert _contents(out) == ["\n\nF", "\n\nF", None, None]


def test_it_holds_a_text_block_stop_across_pings_until_the_next_event():
    tap = AnthropicFooter("F")
    start = _sse({"type": "content_block_start", "index": 0,
                  "content_block": {"type": "text", "text": ""}}, "content_block_start")
    stop = _sse({"type": "content_block_stop", "index": 0}, "content_block_stop")
    ping = _sse({"type": "ping"}, "ping")
    end = _sse({"type": "message_delta", "delta": {"stop_reason": "max_tokens"}},
               "message_delta")
    assert tap.relay(start) == start
    assert tap.relay(stop) == b""
    assert tap.relay(ping) == ping
    out = tap.relay(end)
    assert out.endswith(stop + end) and b'"text":"\\n\\nF"' in out
    assert tap.flush() == b""


def test_it_releases_a_held_stop_unchanged_before_a_tool_use_or_at_a_cut():
    tap = AnthropicFooter("F")
    tap.relay(_sse({"type": "content_block_start", "index": 0,
                    "content_block": {"type": "text", "text": ""}}, "content_block_start"))
    stop = _sse({"type": "content_block_stop", "index": 0}, "content_block_stop")
    tool = _sse({"type": "content_block_start", "index": 1,
                 "content_block": {"type": "tool_use", "id": "t", "name": "n", "input": {}}},
                "content_block_start")
    assert tap.relay(stop) == b""
    assert tap.relay(tool) == stop + tool
    # A tool_use block's stop is never held; a text block's is, until a cut flushes it.
    tool_stop = _sse({"type": "content_block_stop", "index": 1}, "content_block_stop")
    assert tap.relay(tool_stop) == tool_stop
    cut = AnthropicFooter("F")
    cut.relay(_sse({"type": "content_block_start", "index": 0,
                    "content_block": {"type": "text", "text": ""}}, "content_block_start"))
    assert cut.relay(stop) == b""
    assert cut.flush() == stop and cut.flush() == b""


def test_it_rewrites_json_answers_only_where_the_answer_ends_in_text():
    completion = {"choices": [
        {"index": 0, "message": {"content": "a"}, "finish_reason": "stop"},
        {"index": 1, "message": {"content": "b"}, "finish_reason": "tool_calls"},
        {"index": 2, "message": {"content": None}, "finish_reason": "stop"}]}
    assert add_to_chat_completion(completion, "F")
    assert [c["message"]["content"] for c in completion["choices"]] == ["a\n\nF", "b", None]
    assert not add_to_chat_completion({"choices": []}, "F")
    assert not add_to_chat_completion(None, "F")

    message = {"content": [{"type": "text", "text": "a"}], "stop_reason": "end_turn"}
    assert add_to_message(message, "F") and message["content"][0]["text"] == "a\n\nF"
    thinking_last = {"content": [{"type": "thinking", "thinking": "x"}], "stop_reason": None}
    assert not add_to_message(thinking_last, "F")
    tool = {"content": [{"type": "text", "text": "a"}], "stop_reason": "tool_use"}
    assert not add_to_message(tool, "F") and tool["content"][0]["text"] == "a"
