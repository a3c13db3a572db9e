"""Budgets and route-cheap's mapping in the admin."""

from __future__ import annotations

from decimal import Decimal

import pytest

from budgets.models import Budget, CheapRoute
from telemetry import reports
from tests.test_budget_guard import _ledger_row

pytestmark = pytest.mark.django_db

ADD = "/admin/budgets/budget/add/"


def form(**values: str) -> dict[str, str]:
    return {"agent": "", "period": "monthly", "limit_usd": "50", "alert_at_pct": "80",
            "on_exceeded": "block", **values}


def test_it_adds_a_budget_and_lists_its_spend(admin_client):
    response = admin_client.post(ADD, form())
    assert response.status_code == 302, response.content
    budget = Budget.objects.get()
    assert (budget.limit_usd, budget.on_exceeded, budget.source) == (Decimal("50"), "block",
                                                                     "admin")
    _ledger_row(reports.period("today")[0].timestamp() + 1, "12.5")
    page = admin_client.get("/admin/budgets/budget/").content.decode()
    assert "$12.50 (25.0%)" in page and "$37.50" in page
    assert f"{reports.period('month')[1]:%Y-%m-%d %H:%M}" in page


@pytest.mark.parametrize("values, field", [
    ({"limit_usd": "-1"}, "limit_usd"),
    ({"limit_usd": "fifty"}, "limit_usd"),
    ({"alert_at_pct": "0"}, "alert_at_pct"),
    ({"alert_at_pct": "101"}, "alert_at_pct"),
    ({"on_exceeded": "explode"}, "on_exceeded"),
    ({"period": "hourly"}, "period"),
])
def test_it_refuses_bad_values_and_saves_nothing(admin_client, values, field):
    response = admin_client.post(ADD, form(**values))
    assert response.status_code == 200
    assert field in response.context["adminform"].form.errors
    assert not Budget.objects.exists()


def test_it_refuses_a_second_budget_for_the_same_agent_and_period(admin_client):
    Budget.objects.create(period="monthly", limit_usd=5)
    response = admin_client.post(ADD, form())
    assert response.status_code == 200 and Budget.objects.count() == 1


def test_it_keeps_budgets_from_config_yaml_read_only(admin_client):
    budget = Budget.objects.create(period="monthly", limit_usd=5, source="config.yaml")
    url = f"/admin/budgets/budget/{budget.pk}/change/"
    assert admin_client.post(url, form(limit_usd="500")).status_code == 403
    assert admin_client.post(f"/admin/budgets/budget/{budget.pk}/delete/",
                             {"post": "yes"}).status_code == 403
    assert Budget.objects.get().limit_usd == 5


def test_it_edits_route_cheaps_mapping_with_known_models_only(admin_client):
    url = "/admin/budgets/cheaproute/add/"
    bad = admin_client.post(url, {"provider": "openai", "model": "gpt-4o", "cheaper": "gpt-x"})
    assert bad.status_code == 200 and not CheapRoute.objects.exists()
    assert "unknown model &#x27;gpt-x&#x27;" in bad.content.decode()
    ok = admin_client.post(url, {"provider": "", "model": "gpt-4o", "cheaper": "gpt-4.1-nano"})
    assert ok.status_code == 302, ok.content
    assert CheapRoute.objects.get().provider == "openai"
