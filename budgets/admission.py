"""Admission: may this request go upstream, and with which model?

Before forwarding, `check()` compares each budget that applies (the global ones, and the
request's agent's) with its spend in the current calendar period plus what requests already in
flight may cost (their holds). A budget at or past its limit is *exceeded*; the strictest action
among the exceeded budgets decides: block > route-cheap > warn. An admitted request then holds
its own possible cost (input from the body's size, output from max_tokens) against every one of
those budgets, so concurrent requests see each other before any of them has finished.

The check and the hold are one transaction under the budgets' row locks (budgets.standings).
Most requests never get that far: one that fits in the free part of this process's leases is
admitted from memory (budgets.leases); near a limit every request goes through `admit()`.
Requests whose agent has no budget, and every request when no budget exists at all, never touch
the database here: which scopes have budgets is re-read by the lessor's thread.

The design, and why it is safe: docs/design/leases.md.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import DatabaseError, connection, transaction

from budgets import leases, routes
from budgets.standings import (
    DEFAULT_OUTPUT_TOKENS,
    Standing,
    lock_budgets,
    no_flush_wait,
    reservation,
    reset_connection,
    standing,
)
from budgets.values import STRICTNESS, Action
from telemetry.record import Record

log = logging.getLogger("tokenpak.budget")


@dataclass(frozen=True)
class Verdict:
    """What admission decided for one request."""

    action: str = ""  # "" within every budget; else the strictest exceeded budget's action
    decider: Standing | None = None
    alert: bool = False  # a budget that applies is past its alert threshold
    route_to: str = ""  # route-cheap: the model to send instead
    held: bool = False  # holds were taken: the ledger writer must drop them

    @property
    def blocked(self) -> bool:
        return self.action == Action.BLOCK

    def header(self) -> str:
        """X-TokenPak-Budget: exceeded, alert, or nothing."""
        return "exceeded" if self.action else "alert" if self.alert else ""


WITHIN = Verdict()


# Budget work runs on a few long-lived threads, each with its own database connection kept
# open between requests (a request's own thread would connect anew every time).
_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="tokenpak-budget")


async def check(rec: Record, payload: Any, body_size: int,
                max_tokens: int | None = None) -> Verdict:
    """The verdict for a request about to be forwarded; WITHIN when no budget applies.

    max_tokens is the output the request asks for at most, as its provider reads it (proxy's
    Provider.output_limit); without it, the payload's max_tokens-like field, else
    DEFAULT_OUTPUT_TOKENS, is what is held.

    Admitted on a lease, from memory, when every budget's lease has room (rec.leases says what
    it took); else decided exactly by admit() on a budget thread. A client that leaves while
    admit() decides still gets its row, written once admit() is done (rec.pending)."""
    if not settings.TELEMETRY_ENABLED:
        return WITHIN
    lessor = leases.lessor
    lessor.start()
    budgets = lessor.budgets
    if max_tokens is None:
        max_tokens = _max_tokens(payload)
    if budgets is not None:
        if "" not in budgets and rec.agent_id not in budgets:
            return WITHIN
        alert = lessor.take(rec, body_size, max_tokens)
        if alert is not None:
            return Verdict(alert=alert)
    future = asyncio.get_running_loop().run_in_executor(
        _pool, _exact, rec.trace_id, rec.agent_id, rec.provider, rec.requested_model,
        body_size, max_tokens, rec.ts,
    )
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        # admit() goes on in its thread and may take holds, which the writer drops with the
        # row: the row must wait for it (rec.pending), and say it held.
        rec.held = True
        rec.pending = future
        raise


def _exact(
    trace_id: str, agent: str, provider: str, model: str, body_size: int, max_tokens: int,
    ts: float,
) -> Verdict:
    lessor = leases.lessor
    if lessor.budgets is None:  # this process's first request: nothing is cached yet
        lessor.read_budgets()
    budgets = lessor.budgets or {}
    if "" not in budgets and agent not in budgets:
        return WITHIN
    # Sizes the next leases; pricing here may read the database, which is fine on this thread.
    lessor.note(reservation(model, provider, body_size, max_tokens))
    lessor.want(budgets.get("", ()) + (budgets.get(agent, ()) if agent else ()))
    return admit(trace_id, agent, provider, model, body_size, max_tokens, ts)


def _max_tokens(payload: Any) -> int:
    if isinstance(payload, dict):
        for key in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
            value = payload.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return DEFAULT_OUTPUT_TOKENS


def admit(
    trace_id: str, agent: str, provider: str, model: str, body_size: int, max_tokens: int,
    ts: float,
) -> Verdict:
    """Decide and hold, in one transaction under the budgets' row locks."""
    lessor = leases.lessor
    try:
        with lessor.mutex, transaction.atomic():
            no_flush_wait()
            budgets = lock_budgets([agent])
            if not budgets:
                return WITHIN
            standings = [standing(b, ts) for b in budgets]
            # This process's unused lease capacity must not make a budget look exceeded. Given
            # back only then: far from the limit a lease outlives a request that missed it.
            if (any(s.exceeded for s in standings)
                    and lessor.release_free([(b.agent, b.period) for b in budgets])):
                standings = [standing(b, ts) for b in budgets]
            exceeded = [s for s in standings if s.exceeded]
            alert = any(s.alerting for s in standings)
            if not exceeded:
                return _hold(standings, trace_id, provider, model, body_size, max_tokens, ts,
                             Verdict(alert=alert, held=True))
            decider = max(exceeded, key=lambda s: STRICTNESS[Action(s.budget.on_exceeded)])
            action = decider.budget.on_exceeded
            if action == Action.BLOCK:
                return Verdict(action=action, decider=decider, alert=alert)
            target = routes.cheaper(provider, model) if action == Action.ROUTE_CHEAP else ""
            verdict = Verdict(action=action, decider=decider, alert=alert, route_to=target,
                              held=True)
            return _hold(standings, trace_id, provider, target or model, body_size, max_tokens,
                         ts, verdict)
    except DatabaseError as e:
        reset_connection()
        log.error("budget check failed, forwarding %s unchecked: %s", trace_id, e)
        return WITHIN


def _hold(
    standings: list[Standing], trace_id: str, provider: str, model: str, body_size: int,
    max_tokens: int, ts: float, verdict: Verdict,
) -> Verdict:
    amount = reservation(model, provider, body_size, max_tokens)
    with connection.cursor() as cursor:
        cursor.executemany(_HOLD, [(s.spend_id, trace_id, amount, ts) for s in standings])
    return verdict


_HOLD = (
    "INSERT INTO tp_budget_holds (spend_id, trace_id, amount_nano, created) "
    "VALUES (%s, %s, %s, %s)"
)
