"""Price overrides are editable in the admin and apply to the next row."""

from decimal import Decimal

import pytest

from telemetry import pricing
from telemetry.models import ModelPrice


@pytest.mark.django_db
def test_it_adds_a_price_override_in_the_admin(admin_client):
    assert pricing.resolve("claude-haiku-4-5").source == "catalog"
    response = admin_client.post(
        "/admin/telemetry/modelprice/add/",
        {"model": "claude-haiku-4-5", "provider": "anthropic", "input_per_mtok": "0.5",
         "output_per_mtok": "2.5", "source": "ignored"},
    )
    assert response.status_code == 302, response.content
    row = ModelPrice.objects.get()
    assert row.source == "admin"
    price = pricing.resolve("claude-haiku-4-5-20251001")
    assert (price.source, price.input, price.output) == ("override", Decimal("0.5"),
                                                         Decimal("2.5"))
    # Anthropic's cache multipliers follow the overridden input price.
    assert price.cache_read == Decimal("0.05")


@pytest.mark.django_db
def test_it_lists_price_overrides(admin_client):
    ModelPrice.objects.create(model="gpt-4o", input_per_mtok=1, output_per_mtok=2)
    response = admin_client.get("/admin/telemetry/modelprice/")
    assert response.status_code == 200
    assert b"gpt-4o" in response.content


@pytest.mark.django_db
def test_it_brands_the_admin(admin_client):
    assert b"TokenPak" in admin_client.get("/admin/").content
