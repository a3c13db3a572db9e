"""Admission: the steps a parsed request goes through before it is sent, in order.

Each step may pass (None), rewrite the request (the payload, setting `call.rewrite`), or answer
it (a response in the provider's shape, its row finished by the call). A new step (keys,
credits, rate limits) is one function here and one entry in STEPS; no other stage changes.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from django.conf import settings
from django.http import HttpResponse

from budgets import admission as budget_admission
from proxy import compression
from proxy.call import Call
from proxy.work import on_worker

log = logging.getLogger("tokenpak.requests")

Step = Callable[[Call], Awaitable[HttpResponse | None]]


async def compress(call: Call) -> HttpResponse | None:
    """Chat completions and messages: the conversation, compressed as the profile says."""
    if not call.route.compress or call.payload is None:
        return None
    profile, problem = compression.parse_profile(
        call.request.headers.get("x-tokenpak-compress"), settings.COMPRESSION_PROFILE
    )
    if problem:
        return call.error(400, problem)
    outcome = await on_worker(call.big, compression.compress, call.provider.name, call.payload,
                              profile, call.provider.compression_slots)
    call.rec.compression = call.compressed = outcome
    if outcome.changed:
        call.payload, call.rewrite = outcome.payload, True
    return None


async def budgets(call: Call) -> HttpResponse | None:
    """The spend guard's verdict (budgets/admission.py): within, warn, route to a cheaper model, or
    block."""
    if not call.route.billable:
        return None
    rec = call.rec
    verdict = call.verdict = await budget_admission.check(
        rec, call.payload, len(call.body), call.provider.output_limit(call.payload))
    rec.held = verdict.held
    if verdict.action:
        rec.route_note = _route_note(call)
    if verdict.blocked:
        return call.blocked()
    if verdict.route_to:
        call.route, call.payload = call.provider.with_model(call.route, call.payload,
                                                            verdict.route_to)
        rec.sent_model = verdict.route_to
        call.rewrite = True
    if verdict.action and verdict.decider is not None:
        log.warning("%s over budget: %s; %s", rec.trace_id, verdict.decider.summary(),
                    f"routed {rec.requested_model} to {rec.sent_model}" if call.rewrite
                    else "forwarded")
    return None


STEPS: tuple[Step, ...] = (compress, budgets)


async def admit(call: Call) -> HttpResponse | None:
    """The first answer a step gives, or None: the request goes on."""
    for step in STEPS:
        if (answered := await step(call)) is not None:
            return answered
    return None


def _route_note(call: Call) -> str:
    """What an exceeded budget did to the request, as a debug capture shows it."""
    verdict = call.verdict
    over = f"over the {verdict.decider.summary()}" if verdict.decider else "over budget"
    if verdict.blocked:
        return f"blocked: {over}"
    if verdict.route_to:
        return f"routed {call.rec.requested_model} → {verdict.route_to}: {over}"
    return f"sent as requested: {over}"

