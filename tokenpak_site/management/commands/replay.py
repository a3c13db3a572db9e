"""`replay`: send a stored request again, through the whole TokenPak pipeline.

    python manage.py replay list --last 20
    python manage.py replay TRACE_ID                  # as it came: compressed, budgets apply
    python manage.py replay TRACE_ID --no-compress    # the baseline
    python manage.py replay TRACE_ID --model gpt-4o-mini --diff

Only requests whose body was kept can be replayed: the ones `debug on --requests N` captured,
and every request while `telemetry.store_prompts: true`. No API key is ever stored, so the
replay sends yours from OPENAI_API_KEY or ANTHROPIC_API_KEY. The request runs in this process
through the same ASGI application a server runs (compression, budgets, the ledger), so it is
real spend with a ledger row of its own, agent `replay`.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from django.conf import settings
from django.core.management.base import CommandError, CommandParser

from proxy import upstream
from proxy.providers import REGISTRY, Provider
from telemetry import reports, retention
from telemetry.commandline import ReportCommand, telemetry_off
from telemetry.models import Capture, Event
from telemetry.writer import writer
from tokenpak_site.text import shown

KEYS = {name: provider.api_key_env for name, provider in REGISTRY.items()}
AGENT = "replay"
DEFAULT_LAST = 20
HOW_TO_KEEP = (
    "capture the next requests with `python manage.py debug on --requests N`, or keep every "
    "request's body with `telemetry.store_prompts: true` in config.yaml, then send it again"
)
# Headers a replay sets itself; the stored ones never hold a key, but a key must not be doubled.
_OWN = frozenset({"authorization", "x-api-key", "content-length", "host"})


@dataclass
class Stored:
    """A request as the ledger kept it, ready to send again."""

    event: Event
    how: str  # "captured" (debug on) or "stored" (telemetry.store_prompts)
    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes
    profile: str  # the compression profile it went through; "" when not known
    answer: str  # the answer's text; "" when not kept


@dataclass
class Result:
    trace_id: str
    status_code: int
    event: Event | None  # its ledger row; None if the row could not be written
    answer: str


class Command(ReportCommand):
    help = ("Send a captured request again through TokenPak: `replay list [--last N]`, or "
            "`replay TRACE_ID [--no-compress] [--model M] [--diff]`; the key comes from "
            f"{' / '.join(KEYS.values())}, since none is ever stored.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("target", metavar="list|TRACE_ID",
                            help="`list` the replayable requests, or the trace id of one")
        parser.add_argument("--last", type=int, metavar="N",
                            help=f"with list: how many, newest first (default: {DEFAULT_LAST})")
        parser.add_argument("--no-compress", action="store_true",
                            help="send it uncompressed (X-TokenPak-Compress: off): the baseline")
        parser.add_argument("--model", default="", metavar="M", help="send it to model M")
        parser.add_argument("--diff", action="store_true",
                            help="the original's tokens, cost and answer beside the replay's")

    def handle(self, *args: Any, **options: Any) -> None:
        if telemetry_off(self):
            return
        target = options["target"].strip()
        if target == "list":
            for flag in ("no_compress", "model", "diff"):
                if options[flag]:
                    name = "--" + flag.replace("_", "-")
                    raise CommandError(f"replay list: {name} goes with one request: "
                                       f"replay TRACE_ID {name}")
            self.listing(DEFAULT_LAST if options["last"] is None else options["last"])
            return
        if options["last"] is not None:
            raise CommandError("replay: --last goes with list: replay list --last N")
        self.replay(target, options)

    # --- replay list ----------------------------------------------------------------------------

    def listing(self, n: int) -> None:
        if n < 1:
            raise CommandError(f"replay list: --last must be at least 1, got {n}")
        found = replayable(n)
        if not found:
            self.stdout.write(f"replay: nothing to replay: no request body was kept; {HOW_TO_KEEP}")
            return
        self.stdout.write(f"{'TRACE ID':<32}  {'TIME':<19}  {'MODEL':<24} {'IN':>9} {'OUT':>8} "
                          f"{'COST':>11}  BODY")
        for event, how in found:
            self.stdout.write(
                f"{event.trace_id:<32}  {_time(event.ts):<19}  {shown(event.model or '-'):<24} "
                f"{event.input_tokens:>9,} {event.output_tokens:>8,} "
                f"{reports.money(reports.usd(event.cost_nano_usd)):>11}  {how}"
            )
        self.stdout.write(f"replay: {_requests(len(found))} to replay, newest first; send one "
                          "again with `replay TRACE_ID` (--no-compress, --model M, --diff)")

    # --- replay ID ------------------------------------------------------------------------------

    def replay(self, trace_id: str, options: dict[str, Any]) -> None:
        stored = load(trace_id)
        provider = _provider(stored.event.provider)
        credentials = _credentials(provider)
        body = _with_model(stored, options["model"]) if options["model"] else stored.body
        headers = _headers(stored, provider, credentials, options["no_compress"])
        result = send(provider, stored.method, stored.path, headers, body)
        profile = ("off (--no-compress)" if options["no_compress"]
                   else stored.profile or settings.COMPRESSION_PROFILE)
        if options["diff"]:
            self._diff(stored, result, profile)
        else:
            self._show(stored, result, profile)
        if result.event is None or result.event.status != "ok":
            what = result.event.status if result.event else f"HTTP {result.status_code}"
            raise CommandError(f"replay: {trace_id} sent again as {result.trace_id or '-'}, "
                               f"which ended {what}: {result.answer or 'no answer'}")
        self.stdout.write(f"replay: {trace_id} sent again as {result.trace_id}: "
                          f"{_figures(result.event)}{_change(stored.event, result.event)}")

    def _show(self, stored: Stored, result: Result, profile: str) -> None:
        e = result.event
        lines = [
            ("Trace", f"{result.trace_id or '-'} (replay of {stored.event.trace_id}, "
                      f"{stored.how})"),
            ("Model", f"{_model(e) if e else '-'} via {stored.event.provider} {stored.path}"),
            ("Profile", profile),
            ("Status", _status(e, result.status_code)),
            ("Tokens", f"input {e.input_tokens:,} (saved {e.tokens_saved:,}) | output "
                       f"{e.output_tokens:,}" if e else "not in the ledger"),
            ("Cost", reports.money(reports.usd(e.cost_nano_usd)) if e else "-"),
            ("Answer", result.answer or "(none)"),
        ]
        for label, value in lines:
            self.stdout.write(f"{label + ':':<12}{value}")

    def _diff(self, stored: Stored, result: Result, profile: str) -> None:
        o, r = stored.event, result.event
        original_profile = (stored.profile or "not run") if stored.how == "captured" else "unknown"
        rows = [
            ("", "original", "replay"),
            ("Trace", o.trace_id, result.trace_id or "-"),
            ("Model", _model(o), _model(r) if r else "-"),
            ("Profile", original_profile, profile),
            ("Status", _status(o, o.upstream_status), _status(r, result.status_code)),
            ("Tokens in", _tokens_in(o), _tokens_in(r) if r else "-"),
            ("Tokens out", f"{o.output_tokens:,}", f"{r.output_tokens:,}" if r else "-"),
            ("Cost", reports.money(reports.usd(o.cost_nano_usd)),
             reports.money(reports.usd(r.cost_nano_usd)) if r else "-"),
        ]
        for label, left, right in rows:
            self.stdout.write(f"{label:<12}{left:<36}{right}".rstrip())
        self.stdout.write(f"Answer, original:\n{stored.answer or '(none kept)'}")
        self.stdout.write(f"Answer, replay:\n{result.answer or '(none)'}")


def replayable(n: int) -> list[tuple[Event, str]]:
    """The newest n requests that can be sent again, with how their body was kept.

    Two small queries rather than one OR over a join: each walks its own index newest first.
    """
    fields = ("trace_id", "ts", "model", "input_tokens", "output_tokens", "cost_nano_usd")
    captured = Event.objects.filter(capture__isnull=False).only(*fields).order_by("-ts")[:n]
    stored = Event.objects.filter(request_body__gt="").only(*fields).order_by("-ts")[:n]
    found: dict[str, tuple[Event, str]] = {e.trace_id: (e, "stored") for e in stored}
    found.update({e.trace_id: (e, "captured") for e in captured})  # a capture says more
    return sorted(found.values(), key=lambda pair: -pair[0].ts)[:n]


def load(trace_id: str) -> Stored:
    event = Event.objects.filter(trace_id=trace_id).first()
    if event is None:
        raise CommandError(f"replay: no request with trace id {trace_id!r} in the ledger "
                           "(replay list shows the ones that can be sent again)")
    capture = Capture.objects.filter(trace_id=trace_id).first()
    if capture is not None:
        return Stored(event, "captured", capture.method or "POST", capture.path,
                      [(name, value) for name, value in capture.headers],
                      capture.original_body.encode(), capture.profile, capture.response_text)
    if event.request_body:
        provider = REGISTRY.get(event.provider)
        kept = event.response_body or ""
        answer = provider.answer_text(kept) if provider else kept
        return Stored(event, "stored", "POST", event.endpoint, [], event.request_body.encode(),
                      "", answer)
    raise CommandError(f"replay: request {trace_id} was not captured, so there is no body to "
                       f"send again: TokenPak keeps none unless asked; {HOW_TO_KEEP}")


def send(provider: Provider, method: str, path: str, headers: list[tuple[str, str]],
         body: bytes) -> Result:
    """One request through the whole pipeline, in this process; waits for its ledger row."""
    # The application a server runs; importing it applies config.yaml's budgets (database
    # work: before the event loop starts), as serving does.
    from tokenpak_site.asgi import application

    # This process writes one row and exits: the daily prune belongs to servers.
    retention.stay_off()
    try:
        response = asyncio.run(_send(application, method, path, headers, body))
    except httpx.HTTPError as e:
        raise CommandError(f"replay: the request could not be sent: {e}") from None
    writer.flush()
    trace_id = response.headers.get("x-tokenpak-trace-id", "")
    event = Event.objects.select_related("usage", "cost").filter(trace_id=trace_id).first()
    return Result(trace_id, response.status_code, event, provider.answer_text(response.content))


async def _send(
    application: Any, method: str, path: str, headers: list[tuple[str, str]], body: bytes
) -> httpx.Response:
    transport = httpx.ASGITransport(app=application)
    try:
        # A stream's events arrive buffered: the whole answer, once it is complete.
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1",
                                     timeout=None) as client:
            return await client.request(method, path, headers=headers, content=body)
    finally:
        await upstream.upstream().aclose()  # its loop ends with asyncio.run


def _provider(name: str) -> Provider:
    provider = REGISTRY.get(name)
    if provider is None:
        raise CommandError(f"replay: cannot replay a request to provider {name!r}")
    return provider


def _credentials(provider: Provider) -> list[tuple[str, str]]:
    name = provider.api_key_env
    key = os.environ.get(name, "").strip()
    if not key:
        raise CommandError(f"replay: {name} is not set: TokenPak never stores API keys, so a "
                           f"replay sends yours from the environment (export {name}=…)")
    return provider.with_key([], key)


def _headers(
    stored: Stored, provider: Provider, credentials: list[tuple[str, str]], no_compress: bool
) -> list[tuple[str, str]]:
    headers = [(n, v) for n, v in stored.headers
               if n.lower() not in _OWN and not n.lower().startswith("x-tokenpak-")]
    names = {n.lower() for n, _ in headers}
    if "content-type" not in names:
        headers.append(("content-type", "application/json"))
    headers += [(n, v) for n, v in provider.required_headers if n not in names]
    headers += credentials
    headers.append(("x-tokenpak-agent", AGENT))  # spend is real: its row says what it was
    if no_compress:
        headers.append(("x-tokenpak-compress", "off"))
    elif stored.profile:  # the same request goes the same way, whatever the default is now
        headers.append(("x-tokenpak-compress", stored.profile))
    return headers


def _with_model(stored: Stored, model: str) -> bytes:
    try:
        payload = json.loads(stored.body)
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        raise CommandError(f"replay: --model needs a JSON body, and request "
                           f"{stored.event.trace_id}'s is not one")
    payload["model"] = model
    return json.dumps(payload, ensure_ascii=False).encode()


def _model(e: Event) -> str:
    requested = (f" (requested {e.requested_model})"
                 if e.requested_model and e.requested_model != e.model else "")
    return shown(f"{e.model or '-'}{requested}")  # one line, whatever the names hold


def _status(e: Event | None, status_code: int | None) -> str:
    http = f"HTTP {status_code}" if status_code else "not forwarded"
    return f"{e.status if e else 'no ledger row'} ({http})"


def _tokens_in(e: Event) -> str:
    return f"{e.input_tokens:,}" + (f" (saved {e.tokens_saved:,})" if e.tokens_saved else "")


def _figures(e: Event) -> str:
    return (f"{e.input_tokens:,} tokens in, {e.output_tokens:,} out, "
            f"{reports.money(reports.usd(e.cost_nano_usd))}")


def _change(original: Event, replay: Event) -> str:
    tokens = replay.input_tokens - original.input_tokens
    cost = reports.usd(replay.cost_nano_usd - original.cost_nano_usd)
    sign = "+" if cost >= 0 else "-"
    return (f" (original: {_figures(original)}; input {tokens:+,} tokens, cost "
            f"{sign}{reports.money(abs(cost))})")


def _time(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).astimezone(reports.zone()).strftime(
        "%Y-%m-%d %H:%M:%S")


def _requests(n: int) -> str:
    return f"{reports.count(n)} request{'' if n == 1 else 's'}"
