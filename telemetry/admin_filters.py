"""The admin's request list: its filters (agent, model, compressed, default-priced, time).

Each narrows the list exactly as the `cost` command narrows (reports.events), so the admin's
totals and the command's agree to the cent.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, time, timedelta
from typing import TYPE_CHECKING, Any, cast

from django.contrib import admin, messages
from django.contrib.admin.views.main import ChangeList
from django.db.models import QuerySet
from django.http import HttpRequest

from telemetry import reports
from telemetry.models import Event, PricingSource

if TYPE_CHECKING:
    from django.contrib.admin.filters import _ListFilterChoices  # the stubs' name, typing only


def _narrow(qs: QuerySet[Event], **filters: Any) -> QuerySet[Event]:
    """qs, narrowed exactly as the `cost` command narrows: reports.events is the one definition
    of what a filter means, so the admin's totals and the command's agree to the cent."""
    return qs & reports.events(reports.Filters(**filters))


class ValuesFilter(admin.AllValuesFieldListFilter):
    """Django's every-value filter, with its choices from the column's index (the provider,
    model and agent indexes lead with the column) and a visible name for the empty value.

    At most CHOICES of them (and the chosen one): clients invent agents and models by the
    thousand, and each choice is a link on every list page (and a column of the facet counts'
    query, which SQLite caps at 2,000). The search box finds the others."""

    CHOICES = 50
    name = ""  # the title, when not the column's name

    def __init__(self, field: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(field, *args, **kwargs)
        choices = reports.distinct_values(field.name, self.CHOICES + 1)
        more = len(choices) > self.CHOICES
        del choices[self.CHOICES:]
        choices += [v for v in self.lookup_val or () if v not in choices and "\x00" not in v]
        # A list serves as well as Django's values_list() queryset: choices() iterates it.
        self.lookup_choices = choices  # type: ignore[assignment]
        self.title = self.name or self.title
        if more:
            self.title += f" (the first {self.CHOICES}: search for others)"

    def choices(self, changelist: ChangeList) -> Iterator[_ListFilterChoices]:
        for choice in super().choices(changelist):
            if choice["display"] == "":
                choice["display"] = "(none)"
            yield choice


class AgentFilter(ValuesFilter):
    name = "agent"  # not the column's name, agent_id


class CompressedFilter(admin.SimpleListFilter):
    title = "compressed"
    parameter_name = "compressed"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple]:
        return [("yes", "Yes"), ("no", "No")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Event]) -> QuerySet[Event]:
        if self.value() == "yes":
            return _narrow(queryset, compressed_only=True)
        if self.value() == "no":
            return queryset.filter(tokens_saved__lte=0)
        return queryset


class DefaultPricedFilter(admin.SimpleListFilter):
    """Rows priced at the $3 / $15 fallback: models the catalog and overrides do not know."""

    title = "default-priced"
    parameter_name = "default_priced"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple]:
        return [("yes", "Yes"), ("no", "No")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Event]) -> QuerySet[Event]:
        if self.value() == "yes":
            return _narrow(queryset, default_priced_only=True)
        if self.value() == "no":
            return queryset.exclude(cost__pricing_source=PricingSource.DEFAULT)
        return queryset


class TimeFilter(admin.ListFilter):
    """Today, this week, the last 7 days, this month (in the configured zone, as the `cost`
    command counts them), and ?since= / ?until= (YYYY-MM-DD, both days included). A bad value
    is reported on the page and ignored, never a 500."""

    title = "time"
    PERIODS = {"today": "Today", "week": "This week", "7d": "Last 7 days", "month": "This month"}
    PARAMS = ("period", "since", "until")

    def __init__(self, request: HttpRequest, params: dict, model: type, model_admin: Any) -> None:
        super().__init__(request, params, model, model_admin)
        for name in self.PARAMS:
            # Popped even when empty (the since/until form sends both), or Django would take
            # the name for a column.
            value = params.pop(name, [""])[-1].strip()
            if value:
                self.used_parameters[name] = value
        self.since, self.until = self._bounds(request)

    def _bounds(self, request: HttpRequest) -> tuple[datetime | None, datetime | None]:
        since: datetime | None = None
        until: datetime | None = None
        period = cast("str | None", self.used_parameters.get("period"))  # __init__ puts strings
        try:
            if period:
                since, until = self._period(period)
        except reports.ReportError as e:
            messages.error(request, f"{e}: time filter ignored")
        for name, end in (("since", False), ("until", True)):
            text = cast(str, self.used_parameters.get(name, ""))
            if not text:
                continue
            try:
                moment = reports.parse_date(text, end=end)
            except reports.ReportError as e:
                messages.error(request, f"{name}: {e}: ignored")
                continue
            # Several bounds at once (a period and a day range): rows must satisfy all of them.
            if end:
                until = moment if until is None else min(until, moment)
            else:
                since = moment if since is None else max(since, moment)
        return since, until

    def _period(self, name: str) -> tuple[datetime, datetime]:
        if name == "7d":  # today and the six days before, whole local days
            start, end = reports.period("today")
            first = datetime.combine(start.date() - timedelta(days=6), time.min, reports.zone())
            return first, end
        if name not in self.PERIODS:
            raise reports.ReportError(f"unknown period {name!r}")
        return reports.period(name)

    def has_output(self) -> bool:
        return True

    def expected_parameters(self) -> list[str | None]:
        return list(self.PARAMS)

    def queryset(self, request: HttpRequest, queryset: QuerySet[Event]) -> QuerySet[Event]:
        if self.since is None and self.until is None:
            return queryset
        return _narrow(queryset, since=self.since, until=self.until)

    def choices(self, changelist: ChangeList) -> Iterator[_ListFilterChoices]:
        period = self.used_parameters.get("period")
        custom = "since" in self.used_parameters or "until" in self.used_parameters
        yield {
            "selected": not period and not custom,
            "query_string": changelist.get_query_string(remove=self.PARAMS),
            "display": "Any time",
        }
        for value, label in self.PERIODS.items():
            yield {
                "selected": period == value and not custom,
                "query_string": changelist.get_query_string({"period": value}, self.PARAMS),
                "display": label,
            }
        if custom:
            since = self.used_parameters.get("since", "…")
            until = self.used_parameters.get("until", "…")
            yield {
                "selected": True,
                "query_string": changelist.get_query_string(),
                "display": f"{since} to {until}",
            }
