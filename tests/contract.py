"""The contract every provider passes through TokenPak's front door, written once.

`ProviderContract` is the shared base test class: each of its tests runs once per provider in
PROVIDERS, against the running server (fixture `server`) with the fake provider behind it, and
asks the provider's `Client` (tests/contract_clients.py) how to call it, where its usage and
errors are and what numbers to expect. It covers JSON answers, SSE (byte-exact relay, odd
chunking, the first event before the last), usage with cache and reasoning tokens, errors in
the provider's shape (its own, passed through, and TokenPak's), cut streams, a client that
disconnects, and routes (prefix, query string, model list). tests/test_contract.py runs it;
what is truly one provider's stays in its test_proxy_<provider>.py.

A new provider: its wire module in tests/fakes/, its Client in tests/contract_clients.py, its
name here.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable

import httpx
import pytest

from proxy.providers import REGISTRY
from telemetry.models import Cost, Event, Usage
from tests.contract_clients import CLIENTS, Client
from tests.fakes.wire import DEFAULT_TEXT

# Every registered provider: a new one runs the whole contract as soon as its registry line exists
# (test_contract.py then asks for its client and its fake wire module).
PROVIDERS = list(REGISTRY)


def leave_at(url: str, body: dict, headers: dict[str, str], marker: bytes) -> None:
    """Stream a request and hang up as soon as `marker` has arrived."""
    with httpx.stream("POST", url, json=body, headers=headers) as r:
        seen = b""
        for chunk in r.iter_raw():
            seen += chunk
            if marker in seen:
                return

SPLITS = ["split=1", "split=1,crlf", "split=5,crlf", "split=7,crlf", "split=13,crlf"]

# Bodies TokenPak refuses before the provider sees them, and what its 400 says.
BAD_BODIES = {
    "cut-chat": (b'{"model": "gpt-4o", "messages": [', "not valid JSON"),
    "cut-messages": (b'{"model": "claude-sonnet-4-6", "max_tokens":', "not valid JSON"),
    "no-model": (b'{"messages": []}', "Missing required parameter: 'model'"),
    "no-model-max-tokens": (b'{"max_tokens": 5, "messages": []}',
                            "Missing required parameter: 'model'"),
    "not-an-object": (b'["gpt-4o"]', "must be a JSON object"),
    "not-utf8": (b"{\"model\": \"\xff\"}", "not valid UTF-8"),
}


def one_complete_refusal(rows: Callable[..., list], response: httpx.Response) -> Event:
    """One invalid_request row, with its usage and cost rows: all three tables or none."""
    [event] = rows(1)
    assert (event.status, event.error_class, event.upstream_status) == (
        "invalid_request", f"http_{response.status_code}", None)
    assert response.headers["x-tokenpak-trace-id"] == event.trace_id
    assert (Usage.objects.count(), Cost.objects.count()) == (1, 1)
    assert (event.usage.input_tokens, event.usage.output_tokens, event.cost.cost_usd) == (0, 0, 0)
    return event


class ProviderContract:
    """What every provider must do through TokenPak. Subclass it in a test module to run it."""

    @pytest.fixture(params=PROVIDERS)
    def provider(self, request: pytest.FixtureRequest) -> Client:
        return CLIENTS[request.param]

    # --- JSON answers and their usage ---------------------------------------------------

    def test_it_forwards_a_json_answer_and_records_an_exact_row(self, provider, server, fake,
                                                                rows):
        p = provider
        reply = p.create(p.client(server), model=p.json_model,
                         headers={"x-fake-usage": json.dumps(p.json_usage)})
        assert p.text(reply) == DEFAULT_TEXT
        usage = p.reply_usage(reply)
        assert {k: usage[k] for k, v in p.json_usage.items() if isinstance(v, int)} == {
            k: v for k, v in p.json_usage.items() if isinstance(v, int)}

        [event] = rows(1)
        assert (event.provider, event.event_type, event.model) == (p.name, p.event_type,
                                                                    p.json_model)
        assert event.status == "ok" and event.upstream_status == 200 and not event.stream
        assert event.request_id.startswith("req_fake_")
        u = event.usage
        assert (u.input_tokens, u.cache_write_tokens, u.cache_read_tokens, u.output_tokens) == (
            p.json_tokens)
        assert u.cache_hit
        assert event.cost.cost_usd == p.json_cost
        assert event.cost.pricing_source == "catalog"
        assert event.usage_source == "provider"
        assert event.duration_ms > 0

    @pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
    def test_it_records_cache_and_reasoning_tokens_exactly(self, provider, server, fake, rows,
                                                           stream):
        p = provider
        # Every count the provider reports, each a different number.
        counts = {"input": 1200, "output": 300, "cache_read": 1000,
                  "cache_write": 100 if "cache_write" in p.wire.reports else 0,
                  "reasoning": 30 if "reasoning" in p.wire.reports else 0}
        headers = {"x-fake-usage": json.dumps(p.wire.usage(**counts))}
        client = p.client(server)
        if stream:
            assert "".join(p.stream(client, headers=headers)) == DEFAULT_TEXT
        else:
            assert p.text(p.create(client, headers=headers)) == DEFAULT_TEXT
        [event] = rows(1)
        assert event.stream is stream and event.status == "ok"
        assert event.usage_source == "provider" and not event.usage.estimated
        u = event.usage
        assert (u.input_tokens, u.output_tokens, u.cache_read_tokens, u.cache_write_tokens,
                u.reasoning_tokens) == tuple(counts.values())
        assert u.cache_hit

    def test_it_returns_provider_headers_and_a_trace_id(self, provider, server, fake, rows):
        raw = provider.raw_create(provider.client(server))
        assert raw.headers[provider.wire.request_id_header].startswith("req_fake_")
        assert raw.headers[provider.wire.ratelimit_header] == "99"
        [event] = rows(1)
        assert raw.headers["x-tokenpak-trace-id"] == event.trace_id

    # --- streams ------------------------------------------------------------------------

    def test_it_relays_stream_events_byte_for_byte(self, provider, server, fake, rows):
        p = provider
        body = p.exact_stream_body()
        direct = httpx.post(fake.url + p.path, json=body, headers=p.headers).content
        proxied = httpx.post(server.url + p.path, json=body, headers=p.headers).content
        assert p.relay_marker() in proxied
        assert p.normalise(proxied) == p.normalise(direct)
        rows(1)

    def test_it_delivers_the_first_event_before_the_provider_sends_the_last(
            self, provider, server, fake, rows):
        texts = provider.stream(provider.client(server), headers={"x-fake-scenario": "gate"})
        try:
            assert next(texts)
            assert not fake.sent_last.is_set()
        finally:
            fake.release.set()
        rest = list(texts)
        assert rest
        assert fake.sent_last.wait(5)
        rows(1)

    @pytest.mark.parametrize("scenario", SPLITS)
    def test_it_parses_streams_split_at_odd_byte_boundaries(self, provider, server, fake, rows,
                                                            scenario):
        texts = provider.stream(provider.client(server), headers={"x-fake-scenario": scenario})
        assert "".join(texts) == DEFAULT_TEXT
        [event] = rows(1)
        assert (event.usage.input_tokens, event.usage.output_tokens, event.status) == (
            21, 7, "ok")

    # Two words, then the cut: the connection lost mid-event, or a clean end of body without
    # the provider's last events.
    @pytest.mark.parametrize("how, message, error_class", [
        ("cut", "the connection to the provider was lost", "RemoteProtocolError"),
        ("end", "the provider ended the stream before it finished", "incomplete_stream"),
    ], ids=["cut", "end"])
    def test_it_records_a_cut_stream_with_estimated_tokens(self, provider, server, fake, rows,
                                                           how, message, error_class):
        p = provider
        headers = {"x-fake-scenario": f"{how}={p.cut_after}",
                   "x-fake-usage": json.dumps(p.wire.usage(input=321, output=7))}
        seen = []
        with pytest.raises(p.stream_failure, match=f"TokenPak: {message}"):
            for text in p.stream(p.client(server), headers=headers):
                seen.append(text)
        [event] = rows(1)
        assert (event.status, event.error_class) == ("stream_cut", error_class)
        assert event.usage_source == "estimated" and event.usage.estimated
        # What the client saw was counted locally: two words ("Hello", " from") → 2 tokens.
        assert "".join(seen) == "Hello from"
        assert event.usage.output_tokens == 2
        if p.input_up_front:
            assert event.usage.input_tokens == 321  # from the stream's start: exact
        else:
            assert event.usage.input_tokens > 0  # counted locally
        assert event.cost.cost_usd > 0

    # linger: the provider holds its body open after the error event, so the SDK, which raises on
    # the event and closes, hangs up before the provider has ended.
    @pytest.mark.parametrize("scenario", ["stream_error", "stream_error,linger=10"])
    def test_it_records_an_error_event_inside_a_stream(self, provider, server, fake, rows,
                                                       scenario):
        p = provider
        with pytest.raises(p.stream_failure, match=p.wire.stream_error_message):
            for _ in p.stream(p.client(server), headers={"x-fake-scenario": scenario}):
                pass
        [event] = rows(1)
        assert (event.status, event.error_class) == ("error", p.wire.stream_error_type)

    # --- the client leaves ----------------------------------------------------------------

    def test_it_records_a_client_that_disconnects_mid_stream(self, provider, server, fake, rows):
        p = provider
        headers = {**p.headers, "x-fake-scenario": "gate",
                   "x-fake-usage": json.dumps(p.wire.usage(input=77, output=7))}
        leave_at(server.url + p.path, p.body(stream=True), headers, p.first_delta)
        # (left with the provider still holding the rest)
        try:
            [event] = rows(1)
            assert event.status == "client_closed"
            if p.input_up_front:
                assert event.usage.input_tokens == 77  # from the stream's start: exact
            else:
                assert event.usage.input_tokens > 0  # counted locally
            assert event.usage.estimated and event.usage.output_tokens == 1  # "Hello"
            # TokenPak closed its upstream request too: the provider saw the client go.
            assert fake.client_gone.wait(5)
        finally:
            fake.release.set()

    def test_it_records_a_whole_stream_as_ok_when_the_client_leaves_after_its_end(
            self, provider, server, fake, rows):
        p = provider
        headers = {**p.headers, "x-fake-scenario": "linger=10"}
        # The answer is whole when the client leaves; the provider has not closed its body yet.
        leave_at(server.url + p.path, p.body(stream=True), headers, p.last_event)
        [event] = rows(1)
        assert (event.status, event.error_class) == ("ok", "")
        assert not event.usage.estimated and event.usage.output_tokens > 0

    # --- errors in the provider's shape ---------------------------------------------------

    @pytest.mark.parametrize("status, error_type", [(429, "rate_limit_error"),
                                                    (529, "overloaded_error")], ids=["429", "529"])
    def test_it_passes_provider_errors_back_unchanged(self, provider, server, fake, rows,
                                                      status, error_type):
        p = provider
        raised = p.sdk.RateLimitError if status == 429 else p.sdk.InternalServerError
        with pytest.raises(raised) as info:
            p.create(p.client(server), headers={"x-fake-scenario": f"status={status}"})
        assert info.value.status_code == status
        if status == 429:
            assert info.value.response.headers["retry-after"] == "7"
        assert p.sdk_error_type(info.value) == error_type
        [event] = rows(1)
        assert (event.status, event.upstream_status, event.error_class) == (
            "error", status, error_type)
        assert event.cost.cost_usd == 0

    @pytest.mark.parametrize("body, message", BAD_BODIES.values(), ids=BAD_BODIES.keys())
    def test_it_refuses_a_bad_body_in_the_provider_shape(self, provider, server, fake, rows,
                                                         body, message):
        p = provider
        response = httpx.post(server.url + p.path, content=body,
                              headers={**p.headers, "content-type": "application/json"})
        assert response.status_code == 400
        error = p.error_of(response)
        assert message in error["message"]
        assert error["type"] == "invalid_request_error"
        assert fake.log == []  # nothing forwarded
        one_complete_refusal(rows, response)

    def test_it_gives_the_sdk_an_error_it_understands(self, provider, server, fake, rows):
        with pytest.raises(provider.sdk.BadRequestError, match="model"):
            provider.create(provider.client(server), model="")
        assert fake.log == []
        rows(1)

    def test_it_refuses_a_body_over_the_limit_with_413(self, provider, server, fake, rows):
        big = b'{"model": "gpt-4o", "pad": "' + b"x" * (32 * 1024 * 1024) + b'"}'
        response = httpx.post(server.url + provider.path, content=big, timeout=60,
                              headers={**provider.headers, "content-type": "application/json"})
        assert response.status_code == 413
        assert "larger than 32 MB" in provider.error_of(response)["message"]
        assert fake.log == []
        assert rows(1)[0].error_class == "http_413"

    def test_it_refuses_a_url_over_the_limit_with_414(self, provider, server, fake, rows):
        p = provider
        response = httpx.post(server.url + p.path + "?q=" + "q" * 20_000, headers=p.headers,
                              json={"model": "gpt-4o-mini", "max_tokens": 5, "messages": []})
        assert response.status_code == 414
        error = p.error_of(response)
        url = len(p.path) + len("?q=") + 20_000
        assert error["message"] == (
            f"Request URL is {url:,} bytes long; TokenPak takes at most 16,384.")
        assert fake.log == []
        one_complete_refusal(rows, response)

    # --- clients and routes -----------------------------------------------------------------

    @pytest.mark.parametrize("prefixed", [False, True], ids=["plain", "prefixed"])
    def test_it_works_with_the_async_client_streaming_and_not(self, provider, server, fake,
                                                              rows, prefixed):
        p = provider
        client = p.async_client(server, p.prefix if prefixed else "")
        assert asyncio.run(p.async_texts(client)) == (DEFAULT_TEXT, DEFAULT_TEXT)
        assert [r.path for r in fake.log] == [p.path, p.path]
        events = rows(2)
        assert sorted(e.stream for e in events) == [False, True]
        assert [e.cost.cost_usd for e in events] == [p.async_cost] * 2

    def test_it_answers_on_the_provider_prefix(self, provider, server, fake, rows):
        p = provider
        assert p.text(p.create(p.client(server, p.prefix))) == DEFAULT_TEXT
        assert fake.log[0].path == p.path
        rows(1)

    def test_it_passes_query_strings_through(self, provider, server, fake, rows):
        p = provider
        httpx.post(server.url + p.path + "?beta=true", json=p.body(),
                   headers=p.headers).raise_for_status()
        assert fake.log[0].path == p.path + "?beta=true"
        rows(1)

    def test_it_passes_the_model_list_through(self, provider, server, fake, rows):
        assert provider.listed_model in provider.models(provider.client(server))
        assert fake.log[0].path == "/v1/models"
        [event] = rows(1)
        assert (event.event_type, event.provider, event.cost.cost_usd) == (
            "models", provider.name, 0)

    def test_it_leaves_one_row_per_request_under_concurrency(self, provider, server, fake, rows):
        errors: list[BaseException] = []

        def worker() -> None:
            try:
                c = provider.client(server)
                for _ in range(5):
                    provider.create(c)
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=worker) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert len(rows(40)) == 40

