"""Budget alerts: said once per budget and period, when its spend crosses the alert threshold
or the limit, in the log and to the webhook when one is set. Run after the ledger writer's
commit (budgets.settlement), outside the request path.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import httpx
from django.conf import settings
from django.db import connection

from budgets.models import Budget, Spend
from budgets.standings import Key, reset_text
from telemetry import reports

log = logging.getLogger("tokenpak.budget")

_SPENDS = (
    "SELECT id, agent, period, period_start, spent_nano, alerted, exceeded "
    "FROM tp_budget_spend WHERE {}"
)
_SCOPE = "(agent = %s AND period = %s AND period_start = %s)"


def notify(grown: dict[Key, Budget]) -> None:
    """After the writer's commit: say once per budget and period that it crossed its alert
    threshold or its limit (log line, and the webhook when one is set)."""
    if not grown:
        return
    keys = list(grown)
    # Plain SQL, as in settlement.settle(): every batch that grows a counter runs this.
    with connection.cursor() as cursor:
        cursor.execute(_SPENDS.format(" OR ".join([_SCOPE] * len(keys))),
                       [v for key in keys for v in key])
        found = cursor.fetchall()
    for pk, agent, period, start, spent, alerted, exceeded in found:
        budget = grown.get((agent, period, start))
        if budget is None:
            continue
        # Whichever process flips a flag first says it; the others see 0 rows updated. A step
        # past both thresholds at once is said once, as exceeded.
        crossed = ""
        for kind, threshold, said in (("alert", budget.alert_nano, alerted),
                                      ("exceeded", budget.limit_nano, exceeded)):
            if spent < threshold or said:
                continue
            flag = _FLAGS[kind]
            if Spend.objects.filter(pk=pk, **{flag: False}).update(**{flag: True}):
                crossed = kind
        if crossed:
            _announce(crossed, budget, Spend(pk=pk, agent=agent, period=period,
                                             period_start=start, spent_nano=spent))


_FLAGS = {"alert": "alerted", "exceeded": "exceeded"}


def _announce(kind: str, budget: Budget, spend: Spend) -> None:
    start, end = budget.bounds(spend.period_start)
    spent = reports.usd(spend.spent_nano)
    pct = 100.0 * spend.spent_nano / budget.limit_nano if budget.limit_nano else 100.0
    if kind == "alert":
        message = (f"{budget.label} budget at {pct:.1f}%: {reports.money(spent)} of "
                   f"{reports.money(budget.limit_usd)} spent (alert at {budget.alert_at_pct}%)")
    else:
        message = (f"{budget.label} budget exceeded: {reports.money(spent)} of "
                   f"{reports.money(budget.limit_usd)} spent; from now on: "
                   f"{budget.on_exceeded} until {reset_text(end)}")
    log.warning("%s", message)
    url = settings.BUDGET_WEBHOOK_URL
    if url:
        alert = {
            "type": f"budget.{kind}",
            "message": message,
            "budget": {
                "agent": budget.agent or None,
                "period": budget.period,
                "limit_usd": reports.plain(budget.limit_usd),
                "alert_at_pct": budget.alert_at_pct,
                "on_exceeded": budget.on_exceeded,
            },
            "spent_usd": reports.plain(spent),
            "spent_pct": round(pct, 2),
            "period_start": start.isoformat(),
            "period_end": end.isoformat(),
        }
        threading.Thread(target=_post, args=(url, alert), name="tokenpak-webhook",
                         daemon=True).start()


def _post(url: str, alert: dict[str, Any]) -> None:
    where = httpx.URL(url).host  # a webhook's path often carries its secret: never log it
    try:
        response = httpx.post(url, json=alert, timeout=10.0, trust_env=False)
        if response.is_error:
            log.error("budget webhook at %s answered HTTP %d", where, response.status_code)
    except httpx.HTTPError as e:
        log.error("budget webhook at %s failed: %s", where, type(e).__name__)

