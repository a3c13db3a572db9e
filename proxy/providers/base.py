"""What every provider is to TokenPak: the `Provider` interface, its `StreamTap`, and `Route`.

Everything that differs between providers is a method or attribute here, implemented once per
provider module (proxy/providers/openai.py, anthropic.py): the URL patterns it serves, where a
request names its model and output limit, how a key is sent, the error shape of every status
TokenPak answers itself, usage and the answer's text in a JSON body or a stream, the stats
footer's place, the message parts compression may touch, the cheaper-model rule budgets apply.
The rest of TokenPak calls these and never asks which provider it has.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from django.conf import settings
from django.http import HttpResponse

from proxy import answers, footer
from telemetry import tokens
from telemetry.pricing import Price
from telemetry.usage import TokenUsage
from tokenpak_site.conf import Fallback

# Every status TokenPak answers itself, in the provider's error shape: bad request, missing
# token, (credits), body too large, URL too long, over budget, headers too large, provider
# unreachable, provider too slow.
ANSWERED_STATUSES = (400, 401, 402, 413, 414, 429, 431, 502, 504)

# One place in a message where compression may change text: (path to it, the text, whether it
# is a tool's output).
Slot = tuple[tuple[Any, ...], str, bool]
Headers = list[tuple[str, str]]


@dataclass(frozen=True)
class Route:
    """What one proxied request is: its provider, its ledger event type and where it goes."""

    provider: Provider
    event_type: str
    upstream_path: str  # may carry the model (Gemini's /v1beta/models/{model}:generateContent)
    billable: bool = True  # count_tokens and model lists cost nothing
    requires_model: bool = False
    # The provider takes only a JSON body here: any other body is refused, not forwarded.
    json_body: bool = False
    stats_footer: bool = False  # chat completions and messages: answers a person reads
    compress: bool = False  # chat completions and messages: conversations worth compressing


@dataclass(frozen=True)
class Endpoint:
    """One URL pattern a provider serves, as ninja writes it, and the Route a request takes.

    `route` is the Route itself, or a function of the pattern's one parameter (`{rest}` or
    `{path:rest}`). A pattern is served as it is (`bare`) and under the provider's `alias`
    prefix (/openai/v1/...); several providers may declare the same bare pattern (GET
    /v1/models), and then `Provider.claims` picks one per request.
    """

    path: str
    route: Route | Callable[[str], Route]
    method: str = "POST"
    bare: bool = True
    alias: bool = True

    @property
    def catch_all(self) -> bool:
        return "{path:" in self.path

    def route_for(self, rest: str | None = None) -> Route:
        return self.route if isinstance(self.route, Route) else self.route(rest or "")


def model_list(provider: Provider) -> list[Endpoint]:
    """GET /v1/models and /v1/models/{id}, for a provider that serves them there (OpenAI and
    Anthropic both do: `Provider.claims` tells their requests apart)."""
    def detail(rest: str) -> Route:
        return Route(provider, "models", f"/v1/models/{rest}", billable=False)

    return [
        Endpoint("/v1/models", Route(provider, "models", "/v1/models", billable=False),
                 method="GET"),
        Endpoint("/v1/models/{rest}", detail, method="GET"),
    ]


class StreamTap:
    """Reads one provider stream on the side; `event()` returns the bytes to forward."""

    def __init__(self, model: str, stats_footer: footer.StreamFooter | None = None) -> None:
        self.model = model
        self.stats_footer = stats_footer  # adds TokenPak's footer line to the answer's end
        self.usage: TokenUsage | None = None
        self.complete = False  # the provider said the response was finished
        self.error_class = ""  # an error event inside a 200 stream
        self.response_model = ""
        self.seen: list[bytes] = []  # delta payloads, parsed only if usage never arrives

    def event(self, raw: bytes) -> bytes:
        out = self.read(raw)
        return self.stats_footer.relay(out) if self.stats_footer and out else out

    def flush(self) -> bytes:
        """What the footer still holds back when the stream stops early: forward it first."""
        return self.stats_footer.flush() if self.stats_footer else b""

    def read(self, raw: bytes) -> bytes:
        """Take what the ledger needs from one event; return the bytes the provider meant."""
        raise NotImplementedError

    def delta_text(self, payload: Any) -> str:
        raise NotImplementedError

    @property
    def needs_estimate(self) -> bool:
        return self.usage is None

    def estimate(self, count_input: Callable[[], int]) -> TokenUsage:
        """Usage for a stream that ended early: what the provider said, the rest counted."""
        base = self.usage or TokenUsage(input_tokens=count_input())
        text = "".join(self.delta_text(footer.loads(d)) for d in self.seen)
        return replace(base, output_tokens=tokens.count(text, self.model), estimated=True)


class Provider:
    """One upstream API. Subclasses set the class attributes and implement the methods that
    raise NotImplementedError; the others have a default most providers keep."""

    # --- identity, settings and routes ------------------------------------------------------

    # The registry's name (tokenpak_site.conf.PROVIDERS): the ledger's provider column, the
    # config keys providers.NAME.*, the pricing catalog's provider.
    name: ClassVar[str]
    alias: ClassVar[str]  # URL prefix that reaches only this provider: "/openai"

    @property
    def label(self) -> str:
        return settings.PROVIDERS[self.name].label

    @property
    def base_url(self) -> str:
        return settings.PROVIDERS[self.name].base_url

    @property
    def fallbacks(self) -> tuple[Fallback, ...]:
        return settings.PROVIDERS[self.name].fallbacks

    def endpoints(self) -> list[Endpoint]:
        """The URL patterns this provider serves; catch-alls are tried after every other."""
        raise NotImplementedError

    def claims(self, headers: Mapping[str, str]) -> bool:
        """For a pattern several providers serve: True when the headers say this provider's
        SDK sent the request. The first provider declaring the pattern takes the rest."""
        return False

    def client_lines(self, base: str) -> list[tuple[str, str]]:
        """(client, how to point it at TokenPak at `base`), for `manage.py endpoints`."""
        raise NotImplementedError

    # --- the request ------------------------------------------------------------------------

    def model_of(self, route: Route, payload: Any) -> str:
        """The model a request asks for (in the body here; a provider may read the path)."""
        return str(payload.get("model") or "") if isinstance(payload, dict) else ""

    def with_model(self, route: Route, payload: Any, model: str) -> tuple[Route, Any]:
        """The request sent to another model: the route and payload to forward (the payload
        may be changed in place)."""
        payload["model"] = model
        return route, payload

    def streams(self, route: Route, payload: Any) -> bool:
        """Whether the request asks for a stream of events."""
        return isinstance(payload, dict) and payload.get("stream") is True

    # The request fields that bound its output, first found wins (budget reservations).
    output_limit_fields: ClassVar[tuple[str, ...]] = ("max_tokens",)

    def output_limit(self, payload: Any) -> int | None:
        """The most output tokens the request asks for; None when it names no limit."""
        if isinstance(payload, dict):
            for key in self.output_limit_fields:
                value = payload.get(key)
                if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                    return value
        return None

    def ask_for_stream_usage(self, route: Route, payload: dict) -> bool:
        """Before a streamed request goes out: add what makes the provider report usage in
        the stream. True when TokenPak added it, so the tap strips what the client did not
        ask for (see `tap(strip_usage=...)`)."""
        return False

    def estimate_input(self, request: Any, model: str) -> int:
        """Local count of a request's text, for streams cut before usage arrived."""
        if not isinstance(request, dict):
            return 0
        texts: list[str] = []
        _collect_text(request.get("system"), texts)
        _collect_text(request.get("messages"), texts)
        _collect_text(request.get("input"), texts)
        _collect_text(request.get("tools"), texts)
        return tokens.count("\n".join(texts), model)

    @staticmethod
    def compression_slots(message: Any) -> list[Slot]:
        """Where compression may change one message's text (proxy/compression)."""
        raise NotImplementedError

    # --- credentials ------------------------------------------------------------------------

    api_key_env: ClassVar[str]  # the environment variable `replay` takes a key from
    key_headers: ClassVar[tuple[str, ...]]  # every header a client's key may come in
    # Headers the API requires that a stored request may lack (`replay` adds them).
    required_headers: ClassVar[tuple[tuple[str, str], ...]] = ()

    def key_header(self, key: str) -> tuple[str, str]:
        """The header that sends a key TokenPak holds (a fallback's, a replay's)."""
        raise NotImplementedError

    def with_key(self, headers: Headers, key: str) -> Headers:
        """headers with the client's credential replaced by `key`."""
        return [*((k, v) for k, v in headers if k not in self.key_headers), self.key_header(key)]

    # --- errors TokenPak answers in the provider's shape ------------------------------------

    request_id_header: ClassVar[str]
    quota_error: ClassVar[str]  # error type of a request a budget blocked (429)
    _types: ClassVar[dict[int, str]]  # error type per status
    _server_error: ClassVar[str]  # error type of a 5xx with none of its own

    def error_type(self, status: int) -> str:
        default = self._server_error if status >= 500 else "invalid_request_error"
        return self._types.get(status, default)

    def error_body(self, status: int, message: str, error_type: str) -> dict:
        raise NotImplementedError

    def error(self, status: int, message: str, error_type: str = "") -> HttpResponse:
        body = self.error_body(status, message, error_type or self.error_type(status))
        return HttpResponse(json.dumps(body), status=status, content_type="application/json")

    def cut_event(self, message: str) -> bytes:
        """The event that ends a stream the provider cut, so the client's SDK raises."""
        raise NotImplementedError

    # --- answers ----------------------------------------------------------------------------

    def parse_usage(self, usage: dict) -> TokenUsage:
        """A usage object as the provider writes it (cache and reasoning tokens included)."""
        raise NotImplementedError

    def usage_from_body(self, body: Any) -> TokenUsage | None:
        """Usage of a whole JSON answer; None when it has none."""
        if isinstance(body, dict) and isinstance(body.get("usage"), dict):
            return self.parse_usage(body["usage"])
        return None

    def model_from_body(self, body: Any) -> str | None:
        """The model that answered, as a JSON answer says; None when it does not say."""
        if isinstance(body, dict) and isinstance(body.get("model"), str):
            return body["model"]
        return None

    def error_class_from_body(self, body: Any) -> str:
        raise NotImplementedError

    def add_footer(self, answer: Any, text: str) -> bool:
        """Append the stats footer to a JSON answer in place; True when the answer changed."""
        raise NotImplementedError

    def tap(self, model: str, strip_usage: bool, footer_text: str = "") -> StreamTap:
        raise NotImplementedError

    def answer_parts(self, payload: dict) -> list[str]:
        """The text of a whole JSON answer (not an error), in parts (proxy/answers.py)."""
        raise NotImplementedError

    def answer_event(self, payload: dict, out: list[str]) -> None:
        """Append the text of one stream event's JSON data (not an error) to out."""
        raise NotImplementedError

    def answer_text(self, body: bytes | str | None) -> str:
        """An answer's text as a person reads it (trace, replay), from a body or a stream."""
        return answers.text(body, self.answer_parts, self.answer_event)

    def stream_answer_text(self, datas: Iterable[bytes]) -> str:
        """The text of a stream, from its events' data payloads (a tap's `seen`)."""
        return answers.of_events(datas, self.answer_event)

    # --- budgets ----------------------------------------------------------------------------

    def cheap_routes(self, catalog: dict[str, Price]) -> dict[str, str]:
        """{model: cheaper model} for route-cheap budgets, from this provider's models in the
        pricing catalog (plain names). Registered with budgets.routes as proxy starts."""
        return {}


def _collect_text(value: Any, out: list[str]) -> None:
    if isinstance(value, str):
        out.append(value)
    elif isinstance(value, list):
        for item in value:
            _collect_text(item, out)
    elif isinstance(value, dict):
        for key, item in value.items():
            if key in ("text", "content", "input", "arguments", "description", "name"):
                _collect_text(item, out)
            elif key in ("parameters", "input_schema", "function"):
                out.append(json.dumps(item))
