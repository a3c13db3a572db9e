"""Budgets declared in config.yaml's `budget:` block.

    budget:
      monthly_usd: 50          # also daily_usd, weekly_usd
      alert_at_pct: 80
      on_exceeded: block       # warn | block | route-cheap
      webhook_url: http://127.0.0.1:9000/tokenpak   # a setting (TOKENPAK_BUDGET_WEBHOOK_URL)
      agents:
        coder:
          daily_usd: 5         # alert_at_pct and on_exceeded default to the block's
          on_exceeded: route-cheap

The block is checked when settings load, so a bad value stops the process with one line, like
every other setting. Serving processes (and every `budget` command) then write it into
tp_budgets marked `config.yaml`: the file wins for the budgets it names, the CLI and the admin
refuse to change those, and a budget removed from the file is removed from the table.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from budgets.values import BudgetError, Period, key_of, parse_action, parse_limit, parse_pct
from tokenpak_site.conf import ConfigError

log = logging.getLogger("tokenpak.budget")

_LIMITS = {f"{p.value}_usd": p.value for p in Period}
_SHARED = ("alert_at_pct", "on_exceeded")
_TOP = (*_LIMITS, *_SHARED, "webhook_url", "agents")


@dataclass(frozen=True)
class Declared:
    agent: str
    period: str
    limit_usd: Decimal
    alert_at_pct: int
    on_exceeded: str
    key: str  # where in config.yaml, for messages: budget.monthly_usd

    @property
    def scope(self) -> tuple[str, str]:
        return self.agent, self.period


def parse(block: Any) -> list[Declared]:
    """The budgets a `budget:` block declares; ConfigError names the key of a bad value."""
    if block is None:
        return []
    if not isinstance(block, dict):
        raise ConfigError("config.yaml key budget: expected a mapping (monthly_usd: 50, …)")
    _known(block, _TOP, "budget")
    alert = _value(parse_pct, block, "alert_at_pct", "budget", 80)
    action = _value(parse_action, block, "on_exceeded", "budget", "warn")
    found = _limits(block, "", "budget", alert, action)
    agents = block.get("agents") or {}
    if not isinstance(agents, dict):
        raise ConfigError("config.yaml key budget.agents: expected a mapping of agent names")
    for name, entry in agents.items():
        where = f"budget.agents.{name}"
        agent = str(name).strip()
        if not agent or not isinstance(entry, dict):
            raise ConfigError(f"config.yaml key {where}: expected an agent name with a mapping "
                              "(daily_usd: 5, …)")
        _known(entry, (*_LIMITS, *_SHARED), where)
        found += _limits(entry, agent, where,
                         _value(parse_pct, entry, "alert_at_pct", where, alert),
                         _value(parse_action, entry, "on_exceeded", where, action))
    return found


def _known(mapping: dict, keys: tuple[str, ...], where: str) -> None:
    for key in mapping:
        if key not in keys:
            raise ConfigError(f"config.yaml key {where}.{key}: unknown; known: {', '.join(keys)}")


def _value(parse: Any, mapping: dict, key: str, where: str, default: Any) -> Any:
    if mapping.get(key) is None:
        return default
    try:
        return parse(mapping[key])
    except BudgetError as e:
        raise ConfigError(f"config.yaml key {where}.{key}: {e}") from None


def _limits(mapping: dict, agent: str, where: str, alert: int, action: str) -> list[Declared]:
    return [
        Declared(agent, period, _value(parse_limit, mapping, key, where, None), alert, action,
                 key_of(agent, period))
        for key, period in _LIMITS.items()
        if mapping.get(key) is not None
    ]


def apply(declared: list[Declared]) -> None:
    """Write the file's budgets into tp_budgets; drop the ones the file no longer names."""
    from django.db import IntegrityError, transaction

    from budgets.models import Budget, Source

    for attempt in range(3):  # several workers start at once and race on the same rows
        try:
            with transaction.atomic():
                for d in declared:
                    Budget.objects.update_or_create(
                        agent=d.agent, period=d.period,
                        defaults={"limit_usd": d.limit_usd, "alert_at_pct": d.alert_at_pct,
                                  "on_exceeded": d.on_exceeded, "source": Source.CONFIG},
                    )
                wanted = {d.scope for d in declared}
                for budget in Budget.objects.filter(source=Source.CONFIG):
                    if (budget.agent, budget.period) not in wanted:
                        budget.delete()
            return
        except IntegrityError:
            if attempt == 2:
                raise


def apply_on_start() -> None:
    """apply() for a serving process: a database that cannot take it is said, not fatal."""
    from django.conf import settings
    from django.db import DatabaseError

    if not settings.TELEMETRY_ENABLED:
        return
    try:
        apply(settings.BUDGETS_DECLARED)
    except DatabaseError as e:
        log.error("config.yaml budgets not applied (run `python manage.py migrate`?): %s", e)
        return
    if settings.BUDGETS_DECLARED:
        log.info("config.yaml: %d budget(s) applied", len(settings.BUDGETS_DECLARED))
