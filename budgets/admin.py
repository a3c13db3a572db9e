"""Budgets and route-cheap's mapping in the admin. Budgets from config.yaml are read-only."""

from __future__ import annotations

from typing import Any, cast

from django import forms
from django.contrib import admin
from django.http import HttpRequest

from budgets import routes, standings
from budgets.models import Budget, CheapRoute, Source
from telemetry import reports


@admin.register(Budget)
class BudgetAdmin(admin.ModelAdmin):
    list_display = ("budget", "limit", "spent", "remaining", "alert_at_pct", "on_exceeded",
                    "resets", "source")
    list_filter = ("period", "on_exceeded", "source")
    search_fields = ("agent",)
    fields = ("agent", "period", "limit_usd", "alert_at_pct", "on_exceeded", "source",
              "updated_at")
    readonly_fields = ("source", "updated_at")

    def get_changelist_instance(self, request: HttpRequest) -> Any:
        changelist = super().get_changelist_instance(request)
        # One locked read of every budget's standing for the page, not one per cell.
        by_pk = {s.budget.pk: s for s in standings.current()}
        for obj in changelist.result_list:
            obj.standing = by_pk.get(obj.pk)
        return changelist

    def _standing(self, obj: Budget) -> standings.Standing | None:
        return getattr(obj, "standing", None)

    @admin.display(description="budget", ordering="agent")
    def budget(self, obj: Budget) -> str:
        return obj.label

    @admin.display(description="limit", ordering="limit_usd")
    def limit(self, obj: Budget) -> str:
        return reports.money(obj.limit_usd)

    @admin.display(description="spent this period")
    def spent(self, obj: Budget) -> str:
        s = self._standing(obj)
        if s is None:
            return "-"
        pct = 100.0 * s.spent_nano / obj.limit_nano if obj.limit_nano else 100.0
        return f"{reports.money(reports.usd(s.spent_nano))} ({pct:.1f}%)"

    @admin.display(description="remaining")
    def remaining(self, obj: Budget) -> str:
        s = self._standing(obj)
        if s is None:
            return "-"
        return reports.money(max(obj.limit_usd - reports.usd(s.spent_nano), reports.ZERO))

    @admin.display(description="resets")
    def resets(self, obj: Budget) -> str:
        s = self._standing(obj)
        return standings.reset_text(s.end) if s else "-"

    def has_change_permission(self, request: HttpRequest, obj: Budget | None = None) -> bool:
        # The file wins at every start: an edit here would silently come undone.
        if obj is not None and obj.source == Source.CONFIG:
            return False
        return super().has_change_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Budget | None = None) -> bool:
        if obj is not None and obj.source == Source.CONFIG:
            return False
        return super().has_delete_permission(request, obj)

    def save_model(self, request: HttpRequest, obj: Budget, form: Any, change: bool) -> None:
        obj.source = Source.ADMIN
        super().save_model(request, obj, form, change)


class CheapRouteForm(forms.ModelForm):
    class Meta:
        model = CheapRoute
        fields = ("provider", "model", "cheaper")

    def clean(self) -> dict[str, Any]:
        # A ModelForm's clean() returns its cleaned_data (the stubs allow None for any form's).
        data = cast(dict[str, Any], super().clean())
        if data.get("model") and data.get("cheaper"):
            try:
                provider, _, _ = routes.check(data["model"], data["cheaper"],
                                              data.get("provider", ""))
            except routes.RouteError as e:
                raise forms.ValidationError(str(e)) from None
            data["provider"] = provider
        return data


@admin.register(CheapRoute)
class CheapRouteAdmin(admin.ModelAdmin):
    """Rows here win over the defaults derived from the catalog (`tokenpak budget routes`)."""

    form = CheapRouteForm
    list_display = ("model", "cheaper", "provider", "updated_at")
    list_filter = ("provider",)
    search_fields = ("model", "cheaper")

    def save_model(self, request: HttpRequest, obj: CheapRoute, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        routes.forget()
