"""One request in full, as `trace --id` shows it: shared by the command, the dashboard's trace
page and GET /v1/telemetry/traces/{trace_id}."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from telemetry import reports
from telemetry.models import Capture, Cost, Event, Usage


def find(trace_id: str | None = None) -> Event | None:
    """The request with this trace id, or the newest one; usage, cost, capture and segments
    loaded with it."""
    qs = Event.objects.select_related("usage", "cost", "capture").prefetch_related("segments")
    if trace_id is None:
        return qs.order_by("-ts").first()
    trace_id = trace_id.strip()
    if "\x00" in trace_id:  # no trace id holds one, and PostgreSQL refuses one in a query
        return None
    return qs.filter(trace_id=trace_id).first()


def trace(event: Event) -> dict[str, Any]:
    usage = getattr(event, "usage", None) or Usage()
    cost = getattr(event, "cost", None) or Cost()
    raw = event.input_tokens + event.tokens_saved
    return {
        "trace_id": event.trace_id,
        "request_id": event.request_id,
        "time": moment(event.ts),
        "provider": event.provider,
        "endpoint": event.endpoint,
        "model": event.model,
        "requested_model": event.requested_model,
        "agent_id": event.agent_id,
        "session_id": event.session_id,
        "status": event.status,
        "error_class": event.error_class,
        "upstream_status": event.upstream_status,
        "upstream": event.upstream,
        "failover": event.failover,
        "stream": event.stream,
        "duration_ms": event.duration_ms,
        "ttfb_ms": event.ttfb_ms,
        # Per segment type, tokens before and after compression (tp_segments).
        "segments": {s.segment_type: {"raw": s.tokens_raw, "after": s.tokens_after}
                     for s in event.segments.all()},
        "tokens_raw": raw,
        "tokens_compressed": event.input_tokens,
        "tokens_saved": event.tokens_saved,
        "savings_pct": round(100.0 * event.tokens_saved / raw, 2) if raw else 0.0,
        "output_tokens": event.output_tokens,
        "cache_read_tokens": usage.cache_read_tokens,
        "cache_write_tokens": usage.cache_write_tokens,
        "reasoning_tokens": usage.reasoning_tokens,
        "usage_source": event.usage_source,
        "cost_usd": reports.plain(reports.usd(event.cost_nano_usd)),
        "cost_saved_usd": reports.plain(reports.usd(event.saved_nano_usd)),
        "pricing_source": cost.pricing_source,
        "priced_as": cost.priced_as,
        "capture": captured(capture) if (capture := getattr(event, "capture", None)) else None,
    }


def moment(ts: float) -> str:
    """A ledger ts as the local ISO time people read, to the second."""
    return datetime.fromtimestamp(ts, tz=UTC).astimezone(reports.zone()).isoformat(
        timespec="seconds")


def captured(c: Capture) -> dict[str, Any]:
    """What `debug on` kept of the request; the figures are the ledger's, above."""
    return {
        "method": c.method,
        "path": c.path,
        "headers": c.headers,
        "route": c.route_note,
        "profile": c.profile,
        "stages": [{"stage": stage, "ms": ms} for stage, ms in c.stages],
        "recipes": c.recipes,
        "original_body": c.original_body,
        "sent_body": c.sent_body,
        "response_text": c.response_text,
    }


def layout(d: dict[str, Any]) -> list[tuple[str, str]]:
    """The seed's trace layout, one labelled line each."""
    requested = (f" (requested {d['requested_model']})"
                 if d["requested_model"] and d["requested_model"] != d["model"] else "")
    status = d["status"] + (f" [{d['error_class']}]" if d["error_class"] else "")
    http = f"HTTP {d['upstream_status']}" if d["upstream_status"] else "not forwarded"
    ttfb = f", first byte {d['ttfb_ms']:.1f} ms" if d["ttfb_ms"] is not None else ""
    estimated = " (estimated)" if d["usage_source"] == "estimated" else ""
    priced = {"catalog": f"catalog price of {d['priced_as']}",
              "override": f"your price for {d['priced_as']}",
              "default": "default price $3/$15 per MTok (unknown model)",
              "none": "nothing to price"}.get(d["pricing_source"], d["pricing_source"])
    who = ", ".join(x for x in (d["agent_id"] and f"agent {d['agent_id']}",
                                d["session_id"] and f"session {d['session_id']}") if x)
    lines = [
        ("Trace", d["trace_id"] + (f" (provider request {d['request_id']})"
                                   if d["request_id"] else "")),
        ("Model", f"{d['model'] or '-'}{requested} via {d['provider']} {d['endpoint']}"),
        ("Time", d["time"]),
        ("Status", f"{status} ({http}{', stream' if d['stream'] else ''})"),
        *([("Upstream", f"{d['upstream']}, after failover from {d['failover']}")]
          if d.get("failover") else []),
        ("Duration", f"{d['duration_ms']:.1f} ms{ttfb}"),
        ("Pipeline", " → ".join([*(["compress (" + ", ".join(
            f"{kind} {seg['raw']:,}→{seg['after']:,}" for kind, seg in sorted(
                d["segments"].items())) + ")"] if d["segments"] else []), "forward", "ledger"])),
        ("Tokens", f"raw {d['tokens_raw']:,} → compressed {d['tokens_compressed']:,}, "
                   f"saved {d['tokens_saved']:,} ({d['savings_pct']:.1f}%) | "
                   f"output {d['output_tokens']:,}{estimated}"),
        ("Cache", f"read {d['cache_read_tokens']:,} | write {d['cache_write_tokens']:,}"),
        ("Cost", f"{reports.money(Decimal(d['cost_usd']))}{estimated} | saved "
                 f"{reports.money(Decimal(d['cost_saved_usd']))} | {priced}"),
    ]
    if who:
        lines.insert(3, ("Who", who))
    if d.get("capture"):
        lines += capture_layout(d["capture"])
    return lines


def capture_layout(c: dict[str, Any]) -> list[tuple[str, str]]:
    """A captured request's detail; bodies and answer whole, each below its own label."""
    stages = " → ".join(f"{s['stage']} {s['ms']:.2f} ms" for s in c["stages"])
    if stages:
        profile = f"{c['profile']}: {stages}"
    elif c["profile"]:
        profile = c["profile"] if c["profile"] == "off" else f"{c['profile']}: nothing to compress"
    else:
        profile = "not run (not a conversation TokenPak compresses)"
    fired = ", ".join(f"{name} ×{n}" for name, n in sorted(c["recipes"].items()))
    original = c["original_body"].encode()
    if c["sent_body"] is None:
        sent = "nothing went upstream"
    elif c["sent_body"] == c["original_body"]:
        sent = "unchanged"
    else:
        size = len(c["sent_body"].encode())
        change = 100.0 * (size - len(original)) / len(original) if original else 0.0
        sent = f"{size:,} bytes upstream ({change:+.1f}%)\n{c['sent_body']}"
    return [
        ("Captured", f"{c['method']} {c['path']} (debug capture; replay it with `replay ID`)"),
        ("Route", c["route"]),
        ("Profile", profile),
        ("Recipes", fired or "none fired"),
        ("Headers", (", ".join(name for name, _ in c["headers"]) or "none")
         + " (credentials are never kept)"),
        ("Original", f"{len(original):,} bytes as the client sent them\n{c['original_body']}"),
        ("Sent", sent),
        ("Answer", c["response_text"] or "(none)"),
    ]
