"""Proves the fake provider speaks the wire formats the official SDKs parse.

The SDK tests are the point: if the real openai/anthropic clients accept what
the fake sends, proxy tests built on the fake exercise realistic traffic.
The httpx/raw-socket tests pin down the failure scenarios byte for byte.
"""

import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import httpx2  # the transport both SDKs are built on
import openai
import pytest

from tests.fakeprovider import (
    ANTHROPIC_DEFAULT_USAGE,
    DEFAULT_TEXT,
    OPENAI_DEFAULT_USAGE,
    TOOL_ARGUMENTS,
    TOOL_NAME,
    FakeProvider,
)

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def provider() -> Iterator[FakeProvider]:
    with FakeProvider() as fake:
        yield fake


@pytest.fixture
def fake(provider: FakeProvider) -> Iterator[FakeProvider]:
    provider.reset()
    yield provider
    # Never leave a gated handler parked on the shared server.
    provider.release.set()


@pytest.fixture
def oai(fake: FakeProvider) -> openai.OpenAI:
    return openai.OpenAI(base_url=fake.url + "/v1", api_key="sk-test", max_retries=0, timeout=5)


@pytest.fixture
def ant(fake: FakeProvider) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=fake.url, api_key="sk-ant-test", max_retries=0, timeout=5)


@pytest.fixture
def http(fake: FakeProvider) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fake.url, timeout=5) as client:
        yield client


def sse_events(text: str) -> list[tuple[str | None, str]]:
    events: list[tuple[str | None, str]] = []
    for block in re.split(r"\r?\n\r?\n", text.strip()):
        name: str | None = None
        data: list[str] = []
        for line in block.splitlines():
            if line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: "):
                data.append(line[len("data: ") :])
        events.append((name, "\n".join(data)))
    return events


def raw_exchange(fake: FakeProvider, request: bytes) -> bytes:
    """Send raw bytes and read until the server closes, so framing is visible."""
    port = int(fake.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


def raw_post(path: str, body: Any, headers: dict[str, str] | None = None) -> bytes:
    payload = json.dumps(body).encode()
    lines = [f"POST {path} HTTP/1.1", "Host: fake", "Content-Type: application/json"]
    lines += [f"Content-Length: {len(payload)}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


def dechunk(raw: bytes) -> tuple[list[bytes], bool]:
    """Split a raw chunked response into its chunks; report whether it terminated."""
    body = raw.split(b"\r\n\r\n", 1)[1]
    chunks: list[bytes] = []
    while body:
        size_line, sep, rest = body.partition(b"\r\n")
        if not sep:
            break
        size = int(size_line, 16)
        if size == 0:
            return chunks, rest == b"\r\n"
        chunks.append(rest[:size])
        if len(rest) < size + 2:
            break
        body = rest[size + 2 :]
    return chunks, False


# --- OpenAI SDK --------------------------------------------------------------


def test_it_answers_openai_chat_completions_that_the_sdk_parses(oai: openai.OpenAI) -> None:
    raw = oai.chat.completions.with_raw_response.create(model="gpt-test", messages=MESSAGES)
    completion = raw.parse()

    assert completion.object == "chat.completion"
    assert completion.model == "gpt-test"
    assert completion.choices[0].message.content == DEFAULT_TEXT
    assert completion.choices[0].finish_reason == "stop"
    usage = completion.usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (21, 7, 28)
    assert (
        usage.prompt_tokens_details is not None and usage.prompt_tokens_details.cached_tokens == 0
    )
    assert (
        usage.completion_tokens_details is not None
        and usage.completion_tokens_details.reasoning_tokens == 0
    )
    assert raw.headers["x-request-id"].startswith("req_fake_")


def test_it_streams_openai_chat_with_usage_only_on_the_extra_last_chunk(oai: openai.OpenAI) -> None:
    chunks = list(
        oai.chat.completions.create(
            model="gpt-test",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
    )

    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == DEFAULT_TEXT
    # One chunk per word, between the role chunk and the finish chunk.
    assert len(chunks) == 1 + len(DEFAULT_TEXT.split()) + 2
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks[:-1])
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (
        21,
        7,
        28,
    )


def test_it_omits_the_usage_key_unless_include_usage_is_requested(http: httpx.Client) -> None:
    response = http.post(
        "/v1/chat/completions", json={"model": "m", "messages": MESSAGES, "stream": True}
    )

    events = sse_events(response.text)
    assert events[-1] == (None, "[DONE]")
    assert all("usage" not in json.loads(data) for _, data in events[:-1])


def test_it_merges_usage_overrides_into_nested_defaults(oai: openai.OpenAI) -> None:
    override = {"prompt_tokens": 100, "prompt_tokens_details": {"cached_tokens": 5}}
    headers = {"x-fake-usage": json.dumps(override)}

    completion = oai.chat.completions.create(model="m", messages=MESSAGES, extra_headers=headers)
    stream = oai.chat.completions.create(
        model="m",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers=headers,
    )
    streamed = [c.usage for c in stream if c.usage is not None]

    for usage in (completion.usage, streamed[-1]):
        assert usage is not None
        assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (100, 7, 107)
        assert (
            usage.prompt_tokens_details is not None
            and usage.prompt_tokens_details.cached_tokens == 5
        )
        assert (
            usage.completion_tokens_details is not None
            and usage.completion_tokens_details.reasoning_tokens == 0
        )
    assert OPENAI_DEFAULT_USAGE["prompt_tokens_details"] == {
        "cached_tokens": 0
    }  # defaults untouched


def test_it_raises_the_openai_rate_limit_error_with_retry_after(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        oai.chat.completions.create(
            model="m", messages=MESSAGES, extra_headers={"x-fake-scenario": "status=429"}
        )

    err = caught.value
    assert err.status_code == 429
    assert err.response.headers["retry-after"] == "7"
    assert err.type == "rate_limit_error"
    assert err.code == "rate_limit_exceeded"


def test_it_raises_the_openai_server_error_for_a_500_even_when_streaming(
    oai: openai.OpenAI,
) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        oai.chat.completions.create(
            model="m",
            messages=MESSAGES,
            stream=True,
            extra_headers={"x-fake-scenario": "status=500"},
        )
    assert caught.value.type == "server_error"


@pytest.mark.parametrize("scenario", ["split=1", "split=7,crlf", "split=1,crlf"])
def test_it_keeps_openai_streams_parseable_when_split_at_odd_boundaries(
    oai: openai.OpenAI, scenario: str
) -> None:
    stream = oai.chat.completions.create(
        model="m",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"x-fake-scenario": scenario},
    )
    chunks = list(stream)

    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == DEFAULT_TEXT
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 28


def test_it_makes_the_openai_sdk_raise_when_a_stream_is_cut(oai: openai.OpenAI) -> None:
    stream = oai.chat.completions.create(
        model="m", messages=MESSAGES, stream=True, extra_headers={"x-fake-scenario": "cut=3"}
    )
    seen: list[str] = []
    with pytest.raises(openai.APIConnectionError):
        for chunk in stream:
            seen.append(chunk.choices[0].delta.content or "")
    assert "".join(seen) == "Hello from"


def test_it_makes_the_openai_sdk_raise_on_a_mid_stream_error(oai: openai.OpenAI) -> None:
    stream = oai.chat.completions.create(
        model="m", messages=MESSAGES, stream=True, extra_headers={"x-fake-scenario": "stream_error"}
    )
    with pytest.raises(openai.APIError, match="server had an error"):
        list(stream)


def test_it_answers_openai_chat_with_a_tool_call_when_asked(oai: openai.OpenAI) -> None:
    headers = {"x-fake-scenario": "tool_call"}
    reply = oai.chat.completions.create(model="m", messages=MESSAGES, extra_headers=headers)
    with oai.chat.completions.stream(
        model="m",
        messages=MESSAGES,
        stream_options={"include_usage": True},
        extra_headers={"x-fake-scenario": "tool_call,split=7"},
    ) as stream:
        streamed = stream.get_final_completion()

    for completion in (reply, streamed):
        choice = completion.choices[0]
        assert choice.finish_reason == "tool_calls"
        assert choice.message.content is None
        [call] = choice.message.tool_calls or []
        assert call.id.startswith("call_fake") and call.function.name == TOOL_NAME
        assert json.loads(call.function.arguments) == TOOL_ARGUMENTS
    assert streamed.usage is not None and streamed.usage.completion_tokens == 7


def test_it_serves_openai_embeddings_as_base64_or_floats(
    oai: openai.OpenAI, http: httpx.Client
) -> None:
    # The SDK silently requests base64 and decodes it as float32.
    result = oai.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    floats = http.post(
        "/v1/embeddings", json={"model": "e", "input": "a", "encoding_format": "float"}
    ).json()

    assert [e.index for e in result.data] == [0, 1]
    assert result.data[0].embedding == pytest.approx(floats["data"][0]["embedding"], rel=1e-6)
    assert result.usage.prompt_tokens == 21 and result.usage.total_tokens == 21
    assert result.model == "text-embedding-3-small"


def test_it_serves_the_responses_api_that_the_sdk_parses(oai: openai.OpenAI) -> None:
    response = oai.responses.create(model="gpt-test", input="hi")

    assert response.object == "response"
    assert response.output_text == DEFAULT_TEXT
    assert response.usage is not None
    assert (
        response.usage.input_tokens,
        response.usage.output_tokens,
        response.usage.total_tokens,
    ) == (21, 7, 28)
    assert response.usage.input_tokens_details.cached_tokens == 0
    assert response.usage.output_tokens_details.reasoning_tokens == 0


def test_it_streams_the_responses_api_that_the_sdk_accumulates(oai: openai.OpenAI) -> None:
    headers = {
        "x-fake-usage": json.dumps(
            {"input_tokens_details": {"cached_tokens": 4}, "output_tokens": 9}
        )
    }
    with oai.responses.stream(model="gpt-test", input="hi", extra_headers=headers) as stream:
        events = list(stream)
        final = stream.get_final_response()

    types = [e.type for e in events]
    assert types[0] == "response.created" and types[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == DEFAULT_TEXT
    assert final.output_text == DEFAULT_TEXT
    assert final.usage is not None
    assert (final.usage.input_tokens, final.usage.output_tokens, final.usage.total_tokens) == (
        21,
        9,
        30,
    )
    assert final.usage.input_tokens_details.cached_tokens == 4


def test_it_lists_models_in_each_providers_shape(
    oai: openai.OpenAI, ant: anthropic.Anthropic
) -> None:
    openai_ids = [m.id for m in oai.models.list()]
    anthropic_page = ant.models.list()

    assert openai_ids and all(m.startswith("gpt-") for m in openai_ids)
    assert [m.type for m in anthropic_page.data] == ["model"] * len(anthropic_page.data)
    assert anthropic_page.data[0].display_name
    assert anthropic_page.has_more is False
    assert anthropic_page.first_id == anthropic_page.data[0].id


def test_it_returns_404_in_the_openai_error_shape_for_unknown_routes(http: httpx.Client) -> None:
    response = http.post("/v1/nope", json={})

    assert response.status_code == 404
    assert response.json() == {
        "error": {
            "message": "Invalid URL (POST /v1/nope)",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }


# --- Anthropic SDK -----------------------------------------------------------


def test_it_answers_anthropic_messages_that_the_sdk_parses(ant: anthropic.Anthropic) -> None:
    message = ant.messages.create(model="claude-test", max_tokens=50, messages=MESSAGES)

    assert message.model == "claude-test"
    assert message.content[0].type == "text" and message.content[0].text == DEFAULT_TEXT
    assert message.stop_reason == "end_turn"
    assert message.usage.model_dump(include=set(ANTHROPIC_DEFAULT_USAGE)) == ANTHROPIC_DEFAULT_USAGE
    assert message._request_id is not None and message._request_id.startswith("req_fake_")


def test_it_streams_anthropic_messages_with_the_final_usage(ant: anthropic.Anthropic) -> None:
    override = {"output_tokens": 42, "cache_read_input_tokens": 9}
    with ant.messages.stream(
        model="claude-test",
        max_tokens=50,
        messages=MESSAGES,
        extra_headers={"x-fake-usage": json.dumps(override)},
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()

    assert text == DEFAULT_TEXT
    assert final.content[0].type == "text" and final.content[0].text == DEFAULT_TEXT
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (21, 42)
    assert (final.usage.cache_creation_input_tokens, final.usage.cache_read_input_tokens) == (0, 9)


def test_it_sends_anthropic_events_in_the_documented_order(http: httpx.Client) -> None:
    response = http.post(
        "/v1/messages", json={"model": "c", "max_tokens": 5, "messages": MESSAGES, "stream": True}
    )

    events = sse_events(response.text)
    words = len(DEFAULT_TEXT.split())
    expected = ["message_start", "content_block_start", "ping"] + ["content_block_delta"] * words
    assert [name for name, _ in events] == [
        *expected,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert all(json.loads(data)["type"] == name for name, data in events)
    start = json.loads(events[0][1])["message"]["usage"]
    assert start == {**ANTHROPIC_DEFAULT_USAGE, "output_tokens": 1}
    assert json.loads(events[-2][1])["usage"] == {"output_tokens": 7}


@pytest.mark.parametrize("scenario", ["split=1", "split=5,crlf"])
def test_it_keeps_anthropic_streams_parseable_when_split_at_odd_boundaries(
    ant: anthropic.Anthropic, scenario: str
) -> None:
    with ant.messages.stream(
        model="c", max_tokens=5, messages=MESSAGES, extra_headers={"x-fake-scenario": scenario}
    ) as stream:
        final = stream.get_final_message()

    assert final.content[0].type == "text" and final.content[0].text == DEFAULT_TEXT
    assert final.usage.output_tokens == 7


@pytest.mark.parametrize(
    ("status", "error_class"),
    [
        (429, anthropic.RateLimitError),
        (529, anthropic.OverloadedError),
        (500, anthropic.InternalServerError),
    ],
)
def test_it_raises_the_anthropic_sdk_error_for_each_status(
    ant: anthropic.Anthropic, status: int, error_class: type[anthropic.APIStatusError]
) -> None:
    with pytest.raises(error_class) as caught:
        ant.messages.create(
            model="c",
            max_tokens=5,
            messages=MESSAGES,
            extra_headers={"x-fake-scenario": f"status={status}"},
        )

    err = caught.value
    assert err.status_code == status
    assert isinstance(err.body, dict) and err.body["type"] == "error"
    assert err.response.headers.get("retry-after") == ("7" if status == 429 else None)


def test_it_makes_the_anthropic_sdk_raise_on_a_stream_error_event(ant: anthropic.Anthropic) -> None:
    seen: list[str] = []
    manager = ant.messages.stream(
        model="c",
        max_tokens=5,
        messages=MESSAGES,
        extra_headers={"x-fake-scenario": "stream_error"},
    )
    with pytest.raises(anthropic.APIStatusError, match="overloaded_error"), manager as stream:
        for text in stream.text_stream:
            seen.append(text)
    assert seen == ["Hello"]


def test_it_makes_the_anthropic_sdk_raise_when_a_stream_is_cut(ant: anthropic.Anthropic) -> None:
    # The anthropic SDK lets the transport error escape unwrapped mid-stream.
    manager = ant.messages.stream(
        model="c", max_tokens=5, messages=MESSAGES, extra_headers={"x-fake-scenario": "cut=4"}
    )
    with (
        pytest.raises((anthropic.APIConnectionError, httpx2.RemoteProtocolError)),
        manager as stream,
    ):
        stream.get_final_message()


@pytest.mark.parametrize("stream", [False, True])
def test_it_answers_anthropic_messages_with_a_tool_use_when_asked(
    ant: anthropic.Anthropic, stream: bool
) -> None:
    headers = {"x-fake-scenario": "tool_call"}
    if stream:
        with ant.messages.stream(
            model="c", max_tokens=50, messages=MESSAGES, extra_headers=headers
        ) as events:
            message = events.get_final_message()
    else:
        message = ant.messages.create(
            model="c", max_tokens=50, messages=MESSAGES, extra_headers=headers
        )

    assert message.stop_reason == "tool_use"
    text, call = message.content
    assert text.type == "text" and text.text == DEFAULT_TEXT
    assert call.type == "tool_use" and call.name == TOOL_NAME and call.input == TOOL_ARGUMENTS
    assert call.id.startswith("toolu_fake")


def test_it_sends_a_late_ping_before_message_delta_when_asked(http: httpx.Client) -> None:
    response = http.post(
        "/v1/messages",
        json={"model": "c", "max_tokens": 5, "messages": MESSAGES, "stream": True},
        headers={"x-fake-scenario": "late_ping"},
    )

    names = [name for name, _ in sse_events(response.text)]
    assert names[-4:] == ["content_block_stop", "ping", "message_delta", "message_stop"]


def test_it_counts_tokens_for_anthropic(ant: anthropic.Anthropic) -> None:
    result = ant.messages.count_tokens(model="c", messages=MESSAGES)

    assert result.input_tokens == 21


def test_it_records_the_auth_headers_each_sdk_sends(
    fake: FakeProvider, oai: openai.OpenAI, ant: anthropic.Anthropic
) -> None:
    oai.chat.completions.create(model="m", messages=MESSAGES)
    ant.messages.create(model="c", max_tokens=5, messages=MESSAGES)

    openai_req, anthropic_req = fake.log
    assert openai_req.headers["authorization"] == "Bearer sk-test"
    # This SDK generation sends the API key as a bearer token, not x-api-key.
    assert anthropic_req.headers["authorization"] == "Bearer sk-ant-test"
    assert "x-api-key" not in anthropic_req.headers
    assert anthropic_req.headers["anthropic-version"]


# --- wire level --------------------------------------------------------------


def test_it_sets_each_providers_response_headers(http: httpx.Client) -> None:
    chat = http.post("/v1/chat/completions", json={"model": "m", "messages": MESSAGES})
    stream = http.post("/v1/messages", json={"model": "c", "messages": MESSAGES, "stream": True})

    assert chat.headers["content-type"] == "application/json"
    assert chat.headers["content-length"] == str(len(chat.content))
    assert chat.headers["x-request-id"].startswith("req_fake_")
    assert chat.headers["x-ratelimit-remaining-requests"] == "99"
    assert stream.headers["content-type"] == "text/event-stream"
    assert stream.headers["transfer-encoding"] == "chunked"
    assert "content-length" not in stream.headers
    assert stream.headers["request-id"].startswith("req_fake_")
    assert stream.headers["anthropic-ratelimit-requests-remaining"] == "99"
    assert "x-request-id" not in stream.headers


def test_it_logs_every_request_with_lowercased_headers_and_body(
    fake: FakeProvider, http: httpx.Client
) -> None:
    http.post(
        "/v1/chat/completions?trace=1",
        json={"model": "m", "messages": MESSAGES},
        headers={"X-Custom": "yes"},
    )
    http.post("/v1/embeddings", content=b"not json", headers={"Content-Type": "text/plain"})
    http.get("/v1/models")

    first, second, third = fake.log
    assert (first.method, first.path) == ("POST", "/v1/chat/completions?trace=1")
    assert first.headers["x-custom"] == "yes"
    assert all(name == name.lower() for name in first.headers)
    assert first.json == {"model": "m", "messages": MESSAGES}
    assert json.loads(first.body) == first.json
    assert (second.body, second.json) == (b"not json", None)
    assert (third.method, third.body, third.json) == ("GET", b"", None)


def test_it_writes_each_split_piece_as_its_own_chunk(fake: FakeProvider) -> None:
    raw = raw_exchange(
        fake,
        raw_post("/v1/messages", {"model": "c", "stream": True}, {"x-fake-scenario": "split=7"}),
    )
    chunks, terminated = dechunk(raw)

    assert terminated
    assert all(len(c) == 7 for c in chunks[:-1]) and 0 < len(chunks[-1]) <= 7
    events = sse_events(b"".join(chunks).decode())
    assert events[-1][0] == "message_stop"
    assert fake.sent_last.is_set()


def test_it_cuts_mid_event_without_the_terminating_chunk(fake: FakeProvider) -> None:
    full = raw_exchange(fake, raw_post("/v1/messages", {"model": "c", "stream": True}))
    cut = raw_exchange(
        fake, raw_post("/v1/messages", {"model": "c", "stream": True}, {"x-fake-scenario": "cut=2"})
    )

    full_chunks, _ = dechunk(full)
    cut_chunks, terminated = dechunk(cut)
    assert not terminated
    assert not cut.endswith(b"0\r\n\r\n")
    assert len(cut_chunks) == 3
    # Two whole events (message_start carries a per-request id, so compare by
    # name), then exactly the first half of the third (the ping).
    assert cut_chunks[0].startswith(b"event: message_start\n") and cut_chunks[0].endswith(b"\n\n")
    assert cut_chunks[1] == full_chunks[1]
    assert cut_chunks[2] == full_chunks[2][: len(full_chunks[2]) // 2]
    assert full_chunks[2].startswith(b"event: ping\n")


def test_it_truncates_json_bodies_when_cut(http: httpx.Client, fake: FakeProvider) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        http.post("/v1/chat/completions", json={"model": "m"}, headers={"x-fake-scenario": "cut=0"})
    assert not fake.sent_last.is_set()


def test_it_holds_a_gated_stream_until_released(fake: FakeProvider, http: httpx.Client) -> None:
    received: list[bytes] = []
    body = {"model": "c", "messages": MESSAGES, "stream": True}
    with http.stream(
        "POST", "/v1/messages", json=body, headers={"x-fake-scenario": "gate"}
    ) as response:
        pieces = response.iter_bytes()
        while b"content_block_delta" not in b"".join(received):
            received.append(next(pieces))
        reader = threading.Thread(target=lambda: received.extend(pieces))
        reader.start()
        reader.join(0.3)
        assert reader.is_alive(), "stream continued before release"
        assert not fake.sent_last.is_set()

        fake.release.set()
        reader.join(2)

    assert not reader.is_alive()
    events = sse_events(b"".join(received).decode())
    assert [name for name, _ in events].count("content_block_delta") == len(DEFAULT_TEXT.split())
    assert events[-1][0] == "message_stop"
    assert fake.sent_last.wait(1)


@pytest.mark.parametrize("scenario", ["gate", "delay=0.5"])
def test_it_notices_a_client_that_leaves_mid_response(fake: FakeProvider, scenario: str) -> None:
    port = int(fake.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(
            raw_post(
                "/v1/chat/completions",
                {"model": "m", "stream": True},
                {"x-fake-scenario": scenario},
            )
        )
        sock.recv(65536)

    assert fake.client_gone.wait(2)
    assert not fake.sent_last.is_set()


def test_it_hangs_after_reading_the_request(fake: FakeProvider, http: httpx.Client) -> None:
    with pytest.raises(httpx.ReadTimeout):
        http.post(
            "/v1/chat/completions",
            json={"model": "m"},
            headers={"x-fake-scenario": "hang"},
            timeout=0.3,
        )

    assert fake.log[-1].json == {"model": "m"}
    # httpx drops the timed-out connection; the fake notices it went away.
    assert fake.client_gone.wait(2)


@pytest.mark.live
def test_it_stops_promptly_while_a_request_hangs() -> None:
    outcome: list[BaseException] = []
    with FakeProvider() as own:

        def call() -> None:
            try:
                httpx.post(
                    own.url + "/v1/messages",
                    json={},
                    headers={"x-fake-scenario": "hang"},
                    timeout=10,
                )
            except httpx.HTTPError as exc:
                outcome.append(exc)

        caller = threading.Thread(target=call)
        caller.start()
        deadline = time.monotonic() + 2
        while not own.log and time.monotonic() < deadline:
            time.sleep(0.01)
        started = time.monotonic()
        own.stop()
        stopped_in = time.monotonic() - started
        caller.join(2)

    assert stopped_in < 1
    assert len(outcome) == 1 and isinstance(outcome[0], httpx.RemoteProtocolError)


def test_it_serves_malformed_json_with_status_200(http: httpx.Client) -> None:
    response = http.post(
        "/v1/chat/completions", json={"model": "m"}, headers={"x-fake-scenario": "malformed"}
    )

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.content == b"{not json"


def test_it_delays_between_events_and_before_json(http: httpx.Client) -> None:
    headers = {"x-fake-scenario": "delay=0.05", "x-fake-text": "a b"}
    started = time.monotonic()
    http.post("/v1/chat/completions", json={"model": "m"}, headers=headers)
    json_took = time.monotonic() - started
    started = time.monotonic()
    # role, a, b, finish, [DONE]: four gaps.
    http.post("/v1/chat/completions", json={"model": "m", "stream": True}, headers=headers)
    stream_took = time.monotonic() - started

    assert json_took >= 0.05
    assert stream_took >= 0.2


def test_it_keeps_connections_alive_between_requests(fake: FakeProvider) -> None:
    body = json.dumps({"model": "m"}).encode()
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: fake\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%b" % (len(body), body)
    )
    port = int(fake.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        replies = []
        for _ in range(2):
            sock.sendall(request)
            data = b""
            while b"\r\n\r\n" not in data:
                data += sock.recv(65536)
            head, rest = data.split(b"\r\n\r\n", 1)
            # (The ignore: every answer of the fake carries a Content-Length.)
            length = int(re.search(rb"Content-Length: (\d+)", head, re.IGNORECASE).group(1))  # type: ignore[union-attr]
            while len(rest) < length:
                rest += sock.recv(65536)
            replies.append(json.loads(rest))

    assert [r["choices"][0]["message"]["content"] for r in replies] == [DEFAULT_TEXT] * 2
    assert replies[0]["id"] != replies[1]["id"]


def test_it_decodes_utf8_text_and_splits_inside_multibyte_characters(http: httpx.Client) -> None:
    text = "héllo wörld ☃"
    body = {"model": "c", "stream": True}
    headers = {"x-fake-text": text.encode(), "x-fake-scenario": "split=1"}
    with http.stream("POST", "/v1/messages", json=body, headers=headers) as response:
        pieces = list(response.iter_raw())

    assert all(len(p) == 1 for p in pieces)
    events = sse_events(b"".join(pieces).decode())
    deltas = [
        json.loads(data)["delta"]["text"] for name, data in events if name == "content_block_delta"
    ]
    assert "".join(deltas) == text


def test_it_rejects_unknown_scenario_options_loudly(http: httpx.Client) -> None:
    response = http.post("/v1/messages", json={}, headers={"x-fake-scenario": "gait"})

    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_it_resets_log_and_events(fake: FakeProvider, http: httpx.Client) -> None:
    http.get("/v1/models")
    fake.release.set()
    fake.client_gone.set()

    fake.reset()

    assert fake.log == []
    assert not (fake.release.is_set() or fake.sent_last.is_set() or fake.client_gone.is_set())


def test_it_answers_with_the_headers_it_is_asked_for(fake: FakeProvider) -> None:
    chosen = {"x-tokenpak-budget": "exceeded", "x-odd": "a\u001b[2Jb"}
    answer = raw_exchange(fake, raw_post(
        "/v1/chat/completions", {"model": "m", "messages": MESSAGES},
        {"x-fake-reply-headers": json.dumps(chosen)}))
    head = answer.split(b"\r\n\r\n", 1)[0]
    assert b"\r\nx-tokenpak-budget: exceeded\r\n" in head
    assert b"\r\nx-odd: a\x1b[2Jb" in head
