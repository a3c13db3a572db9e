"""`budget`: set, alert, on-exceeded, status, remove, routes, route."""

from __future__ import annotations

import io
import json
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from budgets import routes
from budgets.declared import parse
from budgets.models import Budget, CheapRoute
from telemetry import reports
from tests.live import database_env
from tests.test_cli import tokenpak

pytestmark = pytest.mark.django_db


def run(*args: str) -> str:
    out = io.StringIO()
    call_command("budget", *args, stdout=out)
    return out.getvalue()


def refused(*args: str) -> str:
    with pytest.raises(CommandError) as caught:
        run(*args)
    return str(caught.value)


def month_end() -> str:
    return f"{reports.period('month')[1]:%Y-%m-%d %H:%M} (UTC)"


def test_it_sets_a_budget_with_the_seeds_commands():
    assert run("status") == "No budgets set. Set one with: tokenpak budget set --monthly 50\n"
    assert run("set", "--monthly", "50") == (
        "budget: Monthly $50.00 (alert at 80%, on exceeded: warn)\n")
    assert run("alert", "--at", "75%") == "budget: alert at 75% for Monthly\n"
    assert run("on-exceeded", "block") == "budget: on exceeded block for Monthly\n"
    b = Budget.objects.get()
    assert (b.agent, b.period, b.limit_usd, b.alert_at_pct, b.on_exceeded, b.source) == (
        "", "monthly", Decimal("50"), 75, "block", "cli")
    assert run("status") == (
        "Monthly: $50.00 limit | $0.00 spent (0.0%) | $50.00 remaining\n"
        f"  Alert at 75% ($37.50): not reached | on exceeded: block | resets {month_end()}\n")


def test_it_keeps_agent_budgets_apart_and_changes_one_scope_at_a_time():
    run("set", "--monthly", "50")
    run("set", "--daily", "2.5", "--agent", "coder", "--alert-at", "50",
        "--on-exceeded", "route-cheap")
    run("set", "--weekly", "$10", "--agent", "coder")
    assert run("on-exceeded", "block", "--agent", "coder") == (
        "budget: on exceeded block for Daily (agent coder), Weekly (agent coder)\n")
    assert run("alert", "--at", "90", "--agent", "coder", "--weekly") == (
        "budget: alert at 90% for Weekly (agent coder)\n")
    got = {(b.agent, b.period): (b.limit_usd, b.alert_at_pct, b.on_exceeded)
           for b in Budget.objects.all()}
    assert got == {("", "monthly"): (Decimal("50"), 80, "warn"),
                   ("coder", "daily"): (Decimal("2.5"), 50, "block"),
                   ("coder", "weekly"): (Decimal("10"), 90, "block")}
    status = run("status", "--agent", "coder").splitlines()
    assert status[0] == "Daily (agent coder): $2.50 limit | $0.00 spent (0.0%) | $2.50 remaining"
    assert status[2].startswith("Weekly (agent coder): $10.00 limit")
    assert run("remove", "--daily", "--agent", "coder") == "budget: removed Daily (agent coder)\n"
    assert Budget.objects.count() == 2


def test_it_shows_the_spend_the_cost_command_shows(traffic):
    run("set", "--monthly", "1")
    run("set", "--monthly", "1", "--agent", "coder")
    out = io.StringIO()
    call_command("cost", "--month", "--json", stdout=out)
    total = Decimal(json.loads(out.getvalue())["totals"]["cost_usd"])
    [everyone, coder] = json.loads(run("status", "--json"))
    assert Decimal(everyone["spent_usd"]) == total
    coder_cost = sum(e.cost.cost_usd for e in traffic if e.agent_id == "coder")
    assert Decimal(coder["spent_usd"]) == coder_cost
    assert everyone["resets"] == reports.period("month")[1].isoformat()
    pct = 100 * total
    first = run("status").splitlines()[0]
    assert first == (f"Monthly: $1.00 limit | {reports.money(total)} spent ({pct:.1f}%) | "
                     f"{reports.money(1 - total)} remaining")


def test_it_says_when_the_limit_is_reached():
    from tests.test_budget_guard import _ledger_row

    _ledger_row(reports.period("today")[0].timestamp() + 1, "3")
    run("set", "--daily", "2", "--on-exceeded", "block")
    lines = run("status").splitlines()
    assert lines[0] == "Daily: $2.00 limit | $3.00 spent (150.0%) | $0.00 remaining"
    assert lines[1].startswith("  Alert at 80% ($1.60): limit reached: block until the reset")


@pytest.mark.parametrize("args, message", [
    (("set", "--monthly", "-5"),
     "budget set: bad limit '-5': use a number of dollars of 0 or more, like 50 or 12.50"),
    (("set", "--monthly", "fifty"),
     "budget set: bad limit 'fifty': use a number of dollars of 0 or more, like 50 or 12.50"),
    (("set", "--monthly", "50", "--alert-at", "0%"),
     "budget set: bad percentage '0%': use a whole number from 1 to 100, like 80%"),
    (("set", "--monthly", "50", "--on-exceeded", "explode"),
     "budget set: unknown action 'explode': use warn, block, route-cheap"),
    (("alert", "--at", "101%"),
     "budget alert: bad percentage '101%': use a whole number from 1 to 100, like 80%"),
    (("alert", "--at", "80", "--agent", "nobody"),
     "budget alert: no agent nobody budget to change: set one first, e.g. `tokenpak budget "
     "set --monthly 50 --agent nobody`"),
    (("on-exceeded", "stop"), "budget on-exceeded: unknown action 'stop': use warn, block, "
     "route-cheap"),
    (("route", "gpt-4o", "gpt-9-imaginary"),
     "budget route: unknown model 'gpt-9-imaginary': the mapping takes models the pricing "
     "catalog or a price override knows (see `python manage.py sync_pricing`)"),
    (("route", "claude-opus-4-5", "gpt-4o-mini"),
     "budget route: claude-opus-4-5 and gpt-4o-mini belong to different providers (anthropic "
     "and openai): a request is only ever routed within its own provider"),
])
def test_it_refuses_bad_values_with_one_line_and_saves_nothing(args, message):
    run("set", "--monthly", "50")
    before = list(Budget.objects.values())
    assert refused(*args) == message
    assert list(Budget.objects.values()) == before
    assert not CheapRoute.objects.exists()


def test_it_leaves_budgets_from_config_yaml_to_the_file(settings):
    settings.BUDGETS_DECLARED = parse({"monthly_usd": 50, "on_exceeded": "block",
                                       "agents": {"coder": {"daily_usd": 5}}})
    status = run("status")
    assert "Monthly: $50.00 limit" in status and "| set in config.yaml" in status
    assert refused("set", "--monthly", "80") == (
        "budget set: the monthly budget comes from config.yaml (budget.monthly_usd): change it "
        "there")
    assert refused("on-exceeded", "warn", "--agent", "coder") == (
        "budget on-exceeded: the daily (agent coder) budget comes from config.yaml "
        "(budget.agents.coder.daily_usd): change it there")
    assert Budget.objects.get(agent="").limit_usd == 50
    # A budget the file no longer names goes with it.
    settings.BUDGETS_DECLARED = parse({"monthly_usd": 50})
    run("status")
    assert list(Budget.objects.values_list("agent", flat=True)) == [""]


def test_it_lists_and_changes_route_cheaps_mapping():
    listing = run("routes")
    assert "openai     gpt-4o" in listing and "→ gpt-4o-mini" in listing
    assert "anthropic  claude-opus-4-5" in listing and "→ claude-haiku-4-5" in listing
    assert run("route", "gpt-4o", "gpt-4.1-nano") == (
        "budget: route-cheap sends gpt-4o to gpt-4.1-nano (openai)\n")
    assert routes.cheaper("openai", "gpt-4o-2024-08-06") == "gpt-4.1-nano"
    mapping = {(r["provider"], r["model"]): (r["cheaper"], r["source"])
               for r in json.loads(run("routes", "--json"))}
    assert mapping[("openai", "gpt-4o")] == ("gpt-4.1-nano", "yours")
    assert mapping[("anthropic", "claude-sonnet-4-6")] == ("claude-haiku-4-5", "default")
    assert run("route", "gpt-4o", "--default") == "budget: gpt-4o → gpt-4o-mini\n"
    assert routes.cheaper("openai", "gpt-4o") == "gpt-4o-mini"
    assert refused("route", "gpt-4o") == (
        "budget route: give a cheaper model, or --default to go back to the default")


@pytest.mark.live
def test_it_runs_as_tokenpak_budget(transactional_db):
    env = {"DJANGO_SETTINGS_MODULE": "tokenpak_site.settings", **database_env()}
    result = tokenpak("budget", "set", "--monthly", "50", env=env)
    assert result.returncode == 0, result.stderr
    status = tokenpak("budget", "status", env=env)
    assert status.stdout.splitlines()[0] == (
        "Monthly: $50.00 limit | $0.00 spent (0.0%) | $50.00 remaining")
    bad = tokenpak("budget", "set", "--monthly", "-1", env=env)
    assert bad.returncode != 0
    assert bad.stderr.strip().splitlines()[-1] == (
        "CommandError: budget set: bad limit '-1': use a number of dollars of 0 or more, "
        "like 50 or 12.50")


def test_it_says_budgets_need_the_ledger(settings):
    settings.TELEMETRY_ENABLED = False
    assert run("status").startswith("Telemetry is off")
