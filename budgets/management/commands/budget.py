"""`budget`: set, change and read spending limits (also `tokenpak budget …`)."""

import json
from typing import Any

from django.conf import settings
from django.core.management.base import CommandError, CommandParser
from django.db import transaction

from budgets import routes, standings
from budgets.declared import apply
from budgets.models import Budget, CheapRoute
from budgets.values import Action, BudgetError, Period, parse_action, parse_limit, parse_pct
from telemetry import reports
from telemetry.commandline import ReportCommand, telemetry_off


def _scope(parser: CommandParser, *, period_required: bool = False) -> None:
    parser.add_argument("--agent", default="", help="an X-TokenPak-Agent value (default: global)")
    periods = parser.add_mutually_exclusive_group(required=period_required)
    for p in Period:
        periods.add_argument(f"--{p.value}", dest="period", action="store_const", const=p.value)


class Command(ReportCommand):
    help = "Spending limits: set, alert, on-exceeded, status, remove, routes, route."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        put = sub.add_parser("set", help="set a limit: budget set --monthly 50 [--agent NAME]")
        put.add_argument("--agent", default="", help="an X-TokenPak-Agent value (default: global)")
        periods = put.add_mutually_exclusive_group(required=True)
        for p in Period:
            periods.add_argument(f"--{p.value}", metavar="USD")
        put.add_argument("--alert-at", metavar="PCT", help="alert threshold, like 80%%")
        put.add_argument("--on-exceeded", metavar="ACTION", help=" | ".join(Action.values))
        alert = sub.add_parser("alert", help="alert threshold: budget alert --at 80%%")
        alert.add_argument("--at", required=True, metavar="PCT")
        _scope(alert)
        action = sub.add_parser("on-exceeded", help="budget on-exceeded warn|block|route-cheap")
        action.add_argument("what", metavar="ACTION")
        _scope(action)
        status = sub.add_parser("status", help="every budget: limit, spent, remaining, alert")
        status.add_argument("--agent", default=None, help="one agent's budgets")
        status.add_argument("--json", action="store_true")
        remove = sub.add_parser("remove", help="remove a budget: budget remove --monthly")
        _scope(remove, period_required=True)
        listing = sub.add_parser("routes", help="route-cheap's mapping, defaults and yours")
        listing.add_argument("--json", action="store_true")
        route = sub.add_parser("route", help="budget route MODEL CHEAPER | MODEL --default")
        route.add_argument("model")
        route.add_argument("cheaper", nargs="?")
        route.add_argument("--default", action="store_true", help="back to the default")
        route.add_argument("--provider", default="", choices=["", *settings.PROVIDERS])

    def handle(self, *args: Any, **options: Any) -> None:
        if telemetry_off(self, options.get("json", False)):
            return
        # The file's budgets first, so the CLI shows and guards what a server would enforce.
        apply(settings.BUDGETS_DECLARED)
        try:
            with transaction.atomic():
                getattr(self, options["action"].replace("-", "_"))(options)
        except BudgetError as e:
            raise CommandError(f"budget {options['action']}: {e}") from None

    # --- changing budgets: everything is checked before anything is saved ---------------------

    def set(self, options: dict[str, Any]) -> None:
        period = next(p.value for p in Period if options[p.value] is not None)
        limit = parse_limit(options[period])
        alert = parse_pct(options["alert_at"]) if options["alert_at"] is not None else None
        action = (parse_action(options["on_exceeded"])
                  if options["on_exceeded"] is not None else None)
        budget = Budget.put(_agent(options), period, limit, alert, action)
        self.stdout.write(f"budget: {_definition(budget)}")

    def alert(self, options: dict[str, Any]) -> None:
        pct = parse_pct(options["at"])
        self._change(options, f"alert at {pct}%", alert_at_pct=pct)

    def on_exceeded(self, options: dict[str, Any]) -> None:
        action = parse_action(options["what"])
        self._change(options, f"on exceeded {action}", on_exceeded=action)

    def _change(self, options: dict[str, Any], said: str, **values: Any) -> None:
        budgets = Budget.scope(_agent(options), options["period"])
        for budget in budgets:
            for field, value in values.items():
                setattr(budget, field, value)
            budget.save()
        self.stdout.write(f"budget: {said} for {_labels(budgets)}")

    def remove(self, options: dict[str, Any]) -> None:
        budgets = Budget.scope(_agent(options), options["period"])
        for budget in budgets:
            budget.delete()
        self.stdout.write(f"budget: removed {_labels(budgets)}")

    # --- reading -------------------------------------------------------------------------------

    def status(self, options: dict[str, Any]) -> None:
        agent = None if options["agent"] is None else options["agent"].strip()
        found = standings.current(agent)
        if options["json"]:
            self.stdout.write(json.dumps([_as_json(s) for s in found], indent=2))
            return
        if not found:
            self.stdout.write("No budgets set. Set one with: tokenpak budget set --monthly 50")
            return
        for s in found:
            self.stdout.write(_status_line(s))
            self.stdout.write(f"  {_alert_line(s)}")

    def routes(self, options: dict[str, Any]) -> None:
        table = routes.effective()
        if options["json"]:
            self.stdout.write(json.dumps(
                [{"provider": p, "model": m, "cheaper": c, "source": src}
                 for (p, m), (c, src) in table.items()], indent=2))
            return
        width = max((len(m) for _, m in table), default=0)
        for (provider, model), (cheaper, source) in table.items():
            mark = " (yours)" if source == "yours" else ""
            self.stdout.write(f"{provider:<10} {model:<{width}} → {cheaper}{mark}")

    def route(self, options: dict[str, Any]) -> None:
        if options["default"] == bool(options["cheaper"]):
            raise BudgetError("give a cheaper model, or --default to go back to the default")
        if options["default"]:
            deleted, _ = CheapRoute.objects.filter(model=options["model"].strip()).delete()
            routes.forget()
            target = routes.cheaper(options["provider"] or _provider(options["model"]),
                                    options["model"])
            self.stdout.write(f"budget: {options['model']} → {target or 'itself (no default)'}"
                              f"{'' if deleted else ' (it had no mapping of yours)'}")
            return
        try:
            provider, model, cheaper = routes.check(options["model"], options["cheaper"],
                                                    options["provider"])
        except routes.RouteError as e:
            raise BudgetError(str(e)) from None
        CheapRoute.objects.update_or_create(provider=provider, model=model,
                                            defaults={"cheaper": cheaper})
        routes.forget()
        self.stdout.write(f"budget: route-cheap sends {model} to {cheaper} ({provider})")


def _agent(options: dict[str, Any]) -> str:
    return str(options.get("agent") or "").strip()


def _provider(model: str) -> str:
    from telemetry import pricing

    return pricing.resolve(model).provider


def _labels(budgets: list[Budget]) -> str:
    return ", ".join(b.label for b in budgets)


def _definition(b: Budget) -> str:
    return (f"{b.label} {reports.money(b.limit_usd)} (alert at {b.alert_at_pct}%, "
            f"on exceeded: {b.on_exceeded})")


def _status_line(s: standings.Standing) -> str:
    """The seed's layout: `Monthly: $50.00 limit | $23.40 spent (46.8%) | $26.60 remaining`."""
    b = s.budget
    spent = reports.usd(s.spent_nano)
    pct = 100.0 * s.spent_nano / b.limit_nano if b.limit_nano else 100.0
    remaining = max(b.limit_usd - spent, reports.ZERO)
    line = (f"{b.label}: {reports.money(b.limit_usd)} limit | {reports.money(spent)} spent "
            f"({pct:.1f}%) | {reports.money(remaining)} remaining")
    if s.held_nano:
        line += f" | {reports.money(reports.usd(s.held_nano))} held in flight"
        if s.leased_nano:
            # A lease is capacity a running proxy process set aside for its next requests.
            line += f" ({reports.money(reports.usd(s.leased_nano))} of it by proxy leases)"
    return line


def _alert_line(s: standings.Standing) -> str:
    b = s.budget
    at = reports.money(reports.usd(b.alert_nano))
    if s.spent_nano >= b.limit_nano:
        state = f"limit reached: {b.on_exceeded} until the reset"
    elif s.alerting:
        state = "reached"
    else:
        state = "not reached"
    source = "" if b.source == "cli" else f" | set in {b.source}"
    return (f"Alert at {b.alert_at_pct}% ({at}): {state} | on exceeded: {b.on_exceeded} | "
            f"resets {standings.reset_text(s.end)}{source}")


def _as_json(s: standings.Standing) -> dict[str, Any]:
    b = s.budget
    spent = reports.usd(s.spent_nano)
    return {
        "agent": b.agent or None,
        "period": b.period,
        "limit_usd": reports.plain(b.limit_usd),
        "spent_usd": reports.plain(spent),
        "held_usd": reports.plain(reports.usd(s.held_nano)),
        "leased_usd": reports.plain(reports.usd(s.leased_nano)),
        "remaining_usd": reports.plain(max(b.limit_usd - spent, reports.ZERO)),
        "spent_pct": round(100.0 * s.spent_nano / b.limit_nano, 2) if b.limit_nano else 100.0,
        "alert_at_pct": b.alert_at_pct,
        "alert_reached": s.alerting,
        "exceeded": s.exceeded,
        "on_exceeded": b.on_exceeded,
        "period_start": s.start.isoformat(),
        "resets": s.end.isoformat(),
        "source": b.source,
    }
