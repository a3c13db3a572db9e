"""The budgets' section of the dashboard's overview (added by budgets/apps.py)."""

from __future__ import annotations

from budgets import standings
from telemetry import reports
from telemetry.dashboard import Chart, Column, Section


def budgets_section() -> Section:
    rows = []
    for s in standings.current():
        b = s.budget
        spent = reports.usd(s.spent_nano)
        rows.append({
            "budget": b.label, "agent": b.agent or "(all traffic)", "limit_usd": b.limit_usd,
            "spent_usd": spent, "used_pct": 100.0 * s.spent_nano / b.limit_nano
            if b.limit_nano else 100.0,
            "alert_at_pct": b.alert_at_pct,
            "state": "exceeded" if s.exceeded else "alert" if s.alerting else "ok",
            "on_exceeded": b.on_exceeded, "resets": standings.reset_text(s.end),
        })
    return Section("budgets", "Budgets", [
        Column("budget", "Budget"), Column("agent", "Agent"), Column("limit_usd", "Limit", "usd"),
        Column("spent_usd", "Spent", "usd"), Column("used_pct", "Used", "pct"),
        Column("state", "State"), Column("on_exceeded", "On exceeded"),
        Column("resets", "Resets")], rows, Chart("gauges", "budget", ("used_pct",), "pct"),
        empty="No budgets set: `tokenpak budget set --monthly 50` makes one.")
