"""How the provider contract (tests/contract.py) talks to each provider: one Client per provider.

What differs between providers, as a client sees it through TokenPak, is said here and nowhere
else: how to call the provider with its official SDK or by hand, where its usage and its errors
are, which event in its stream is which, and the numbers each case expects (costs follow the
pricing catalog). What the provider sends is its wire module's, in tests/fakes/.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from decimal import Decimal
from types import ModuleType
from typing import Any, ClassVar

import anthropic
import httpx
import openai

from tests.fakes import anthropic as anthropic_wire
from tests.fakes import openai as openai_wire
from tests.fakes.wire import Wire

MESSAGES = [{"role": "user", "content": "Say hello"}]


class Client:
    """One provider as the contract sees it from the client's side."""

    name: ClassVar[str]
    wire: ClassVar[Wire]
    sdk: ClassVar[ModuleType]  # the official SDK: its client and its error classes
    key: ClassVar[str]
    headers: ClassVar[dict[str, str]]  # a hand-written request's credentials and version
    path: ClassVar[str]  # the model call
    event_type: ClassVar[str]  # the ledger's name for it
    model: ClassVar[str]
    prefix: ClassVar[str]  # the provider's own route prefix, for the SDK's base URL
    stream_failure: ClassVar[type[Exception]]  # what the SDK raises on TokenPak's cut event
    # A raw stream's first content event, and its last event.
    first_delta: ClassVar[bytes]
    last_event: ClassVar[bytes]
    cut_after: ClassVar[int]  # events in a stream up to its second word ("Hello", " from")
    input_up_front: ClassVar[bool]  # a stream says its input tokens before its first word
    listed_model: ClassVar[str]  # a model the provider's model list names
    # The JSON case: a model, the usage the provider says, the ledger's (input, cache write,
    # cache read, output) and the cost.
    json_model: ClassVar[str]
    json_usage: ClassVar[dict[str, Any]]
    json_tokens: ClassVar[tuple[int, int, int, int]]
    json_cost: ClassVar[Decimal]
    async_model: ClassVar[str]  # the async case: its model and each answer's cost
    async_cost: ClassVar[Decimal]

    def body(self, model: str = "", stream: bool = False, **extra: Any) -> dict[str, Any]:
        """A hand-written request's JSON body."""
        raise NotImplementedError

    def exact_stream_body(self) -> dict[str, Any]:
        """A stream request TokenPak must relay byte for byte (nothing for it to strip)."""
        return self.body(stream=True)

    def normalise(self, data: bytes) -> bytes:
        """A stream with what differs per response (ids, timestamps) blanked out."""
        raise NotImplementedError

    def relay_marker(self) -> bytes:
        """Bytes that show the relayed stream is the provider's whole stream."""
        raise NotImplementedError

    def client(self, server: Any, prefix: str = "", **kwargs: Any) -> Any:
        raise NotImplementedError

    def async_client(self, server: Any, prefix: str = "") -> Any:
        raise NotImplementedError

    def create(self, client: Any, model: str | None = None,
               headers: dict[str, str] | None = None) -> Any:
        """One JSON model call with the SDK (model None: the usual one)."""
        raise NotImplementedError

    def raw_create(self, client: Any) -> Any:
        """The same, with the SDK's raw response (its headers)."""
        raise NotImplementedError

    def text(self, reply: Any) -> str:
        raise NotImplementedError

    def reply_usage(self, reply: Any) -> dict[str, Any]:
        """The usage the SDK parsed from a JSON answer, in the provider's words."""
        return reply.usage.model_dump()

    def stream(self, client: Any, model: str = "",
               headers: dict[str, str] | None = None) -> Iterator[str]:
        """A streamed call with the SDK: its text pieces as they arrive."""
        raise NotImplementedError

    async def async_texts(self, client: Any) -> tuple[str, str]:
        """With the async SDK client: a JSON answer's text, then a stream's."""
        raise NotImplementedError

    def models(self, client: Any) -> list[str]:
        return [m.id for m in client.models.list().data]

    def error_of(self, response: httpx.Response) -> dict[str, Any]:
        """The error as the provider's SDK reads it, after checking the envelope is that SDK's."""
        raise NotImplementedError

    def sdk_error_type(self, exc: Any) -> str:
        """The error type in the body of an error the SDK raised."""
        raise NotImplementedError


class OpenAIClient(Client):
    name = "openai"
    wire = openai_wire.WIRE
    sdk: ClassVar[ModuleType] = openai
    key = "sk-proj-TESTKEY0123456789abcdef"
    headers: ClassVar[dict[str, str]] = {"authorization": "Bearer sk-test-000000"}
    path = "/v1/chat/completions"
    event_type = "chat.completions"
    model = "gpt-4o-mini"
    prefix = "/openai"
    stream_failure = openai.APIError
    first_delta = b'"content":"Hello"'
    last_event = b"[DONE]"
    cut_after = 3  # the role chunk, "Hello", " from"
    input_up_front = False  # prompt_tokens come with the usage chunk, at the end
    listed_model = "gpt-4o-mini"
    json_model = "gpt-4o-mini"
    json_usage: ClassVar[dict[str, Any]] = {
        "prompt_tokens": 1200, "completion_tokens": 300,
        "prompt_tokens_details": {"cached_tokens": 1000}}
    json_tokens = (1200, 0, 1000, 300)
    # 200 uncached × $0.15 + 1000 cached × $0.075 + 300 out × $0.60, per million
    json_cost = Decimal("0.000285000")
    async_model = "gpt-4o"
    async_cost = Decimal("0.0001225")  # 21 in × $2.50 + 7 out × $10.00, per million

    def body(self, model: str = "", stream: bool = False, **extra: Any) -> dict[str, Any]:
        return {"model": model or self.model, "messages": MESSAGES, "stream": stream, **extra}

    def exact_stream_body(self) -> dict[str, Any]:
        # Asking for usage itself: TokenPak has no usage chunk to take out.
        return self.body(stream=True, stream_options={"include_usage": True})

    def normalise(self, data: bytes) -> bytes:
        data = re.sub(rb'"id":"[^"]*"', b'"id":""', data)
        return re.sub(rb'"created":\d+', b'"created":0', data)

    def relay_marker(self) -> bytes:
        return b'"usage":{'

    def client(self, server: Any, prefix: str = "", **kwargs: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=server.url + prefix + "/v1", api_key=self.key,
                             max_retries=0, **kwargs)

    def async_client(self, server: Any, prefix: str = "") -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=server.url + prefix + "/v1", api_key=self.key,
                                  max_retries=0)

    def create(self, client: Any, model: str | None = None,
               headers: dict[str, str] | None = None) -> Any:
        return client.chat.completions.create(model=self.model if model is None else model,
                                              messages=MESSAGES, extra_headers=headers or {})

    def raw_create(self, client: Any) -> Any:
        return client.chat.completions.with_raw_response.create(model=self.model,
                                                                messages=MESSAGES)

    def text(self, reply: Any) -> str:
        return reply.choices[0].message.content

    def stream(self, client: Any, model: str = "",
               headers: dict[str, str] | None = None) -> Iterator[str]:
        chunks = client.chat.completions.create(model=model or self.model, messages=MESSAGES,
                                                stream=True, extra_headers=headers or {})
        for chunk in chunks:
            if chunk.choices and chunk.choices[0].delta.content:
                yield chunk.choices[0].delta.content

    async def async_texts(self, client: Any) -> tuple[str, str]:
        async with client as c:
            reply = await c.chat.completions.create(model=self.async_model, messages=MESSAGES)
            stream = await c.chat.completions.create(model=self.async_model, messages=MESSAGES,
                                                     stream=True)
            text = "".join([ch.choices[0].delta.content or "" async for ch in stream])
            return reply.choices[0].message.content, text

    def error_of(self, response: httpx.Response) -> dict[str, Any]:
        payload = response.json()
        assert set(payload["error"]) == {"message", "type", "param", "code"}
        return payload["error"]

    def sdk_error_type(self, exc: Any) -> str:
        return exc.body["type"]  # the SDK keeps the body's "error" object


class AnthropicClient(Client):
    name = "anthropic"
    wire = anthropic_wire.WIRE
    sdk: ClassVar[ModuleType] = anthropic
    key = "sk-ant-api03-TESTKEY0123456789abcdef"
    headers: ClassVar[dict[str, str]] = {"x-api-key": "sk-ant-test-000000",
                                         "anthropic-version": "2023-06-01"}
    path = "/v1/messages"
    event_type = "messages"
    model = "claude-sonnet-4-6"
    prefix = "/anthropic"
    stream_failure = anthropic.APIStatusError
    first_delta = b"content_block_delta"
    last_event = b"message_stop"
    cut_after = 5  # message_start, content_block_start, ping, "Hello", " from"
    input_up_front = True  # message_start
    listed_model = "claude-haiku-4-5"
    json_model = "claude-sonnet-4-6"
    json_usage: ClassVar[dict[str, Any]] = {
        "input_tokens": 100, "cache_creation_input_tokens": 2000,
        "cache_read_input_tokens": 10000, "output_tokens": 500}
    json_tokens = (12100, 2000, 10000, 500)
    # 100 × $3 + 2000 × $3.75 + 10000 × $0.30 + 500 × $15, per million
    json_cost = Decimal("0.0183")
    async_model = "claude-haiku-4-5"
    async_cost = Decimal("0.000056")  # 21 × $1 + 7 × $5, per million

    def body(self, model: str = "", stream: bool = False, **extra: Any) -> dict[str, Any]:
        return {"model": model or self.model, "max_tokens": 50, "messages": MESSAGES,
                "stream": stream, **extra}

    def normalise(self, data: bytes) -> bytes:
        return re.sub(rb"(req|msg)_fake_?\w+", b"ID", data)

    def relay_marker(self) -> bytes:
        return b"event: ping"

    def client(self, server: Any, prefix: str = "", **kwargs: Any) -> anthropic.Anthropic:
        return anthropic.Anthropic(base_url=server.url + prefix, api_key=self.key,
                                   max_retries=0, **kwargs)

    def async_client(self, server: Any, prefix: str = "") -> anthropic.AsyncAnthropic:
        return anthropic.AsyncAnthropic(base_url=server.url + prefix, api_key=self.key,
                                        max_retries=0)

    def create(self, client: Any, model: str | None = None,
               headers: dict[str, str] | None = None) -> Any:
        return client.messages.create(model=self.model if model is None else model,
                                      max_tokens=100, messages=MESSAGES,
                                      extra_headers=headers or {})

    def raw_create(self, client: Any) -> Any:
        return client.messages.with_raw_response.create(model=self.model, max_tokens=10,
                                                        messages=MESSAGES)

    def text(self, reply: Any) -> str:
        return reply.content[0].text

    def stream(self, client: Any, model: str = "",
               headers: dict[str, str] | None = None) -> Iterator[str]:
        with client.messages.stream(model=model or self.model, max_tokens=100,
                                    messages=MESSAGES, extra_headers=headers or {}) as events:
            for event in events:
                if event.type == "text":
                    yield event.text

    async def async_texts(self, client: Any) -> tuple[str, str]:
        reply = await client.messages.create(model=self.async_model, max_tokens=10,
                                             messages=MESSAGES)
        async with client.messages.stream(model=self.async_model, max_tokens=10,
                                          messages=MESSAGES) as stream:
            text = await stream.get_final_text()
        await client.close()
        return reply.content[0].text, text

    def error_of(self, response: httpx.Response) -> dict[str, Any]:
        payload = response.json()
        assert payload["type"] == "error" and set(payload["error"]) == {"type", "message"}
        return payload["error"]

    def sdk_error_type(self, exc: Any) -> str:
        return exc.body["error"]["type"]  # the SDK keeps the whole body


CLIENTS: dict[str, Client] = {c.name: c for c in (OpenAIClient(), AnthropicClient())}
