"""route-cheap's mapping: defaults from the pricing catalog, the user's rows winning."""

from __future__ import annotations

import pytest

from budgets import routes
from budgets.models import CheapRoute
from telemetry import pricing

pytestmark = pytest.mark.django_db


def test_it_derives_cheaper_defaults_from_the_catalog():
    table = routes.defaults()
    assert table[("anthropic", "claude-opus-4-5")] == "claude-haiku-4-5"
    assert table[("anthropic", "claude-sonnet-4-6")] == "claude-haiku-4-5"
    assert table[("openai", "gpt-4o")] == "gpt-4o-mini"
    assert table[("openai", "gpt-4.1")] == "gpt-4.1-mini"
    assert table[("openai", "gpt-5.2")] == "gpt-5-mini"
    for (provider, model), target in table.items():
        before, after = pricing.resolve(model), pricing.resolve(target)
        assert after.source == before.source == "catalog", (model, target)
        assert after.provider == before.provider == provider, (model, target)
        assert after.input < before.input and after.output <= before.output, (model, target)


def test_it_routes_nothing_that_is_already_the_cheap_one():
    for model in ("claude-haiku-4-5", "gpt-4o-mini", "gpt-4.1-nano", "text-embedding-3-small",
                  "mystery-model"):
        assert routes.cheaper("openai", model) == routes.cheaper("anthropic", model) == ""


def test_it_matches_dated_and_prefixed_names_and_prefers_the_users_rows():
    assert routes.cheaper("anthropic", "claude-sonnet-4-5-20250929") == "claude-haiku-4-5"
    assert routes.cheaper("openai", "openai/gpt-4o-2024-11-20") == "gpt-4o-mini"
    assert routes.cheaper("anthropic", "gpt-4o") == ""  # only within the request's provider
    CheapRoute.objects.create(provider="openai", model="gpt-4o", cheaper="gpt-4.1-nano")
    routes.forget()
    assert routes.cheaper("openai", "gpt-4o-2024-11-20") == "gpt-4.1-nano"


def test_it_checks_a_mapping_before_it_is_saved():
    assert routes.check("claude-opus-4-5", "claude-haiku-4-5") == (
        "anthropic", "claude-opus-4-5", "claude-haiku-4-5")
    for model, target, problem in [
        ("gpt-4o", "gpt-4o", "cannot be routed to itself"),
        ("gpt-4o", "nope-1", "unknown model 'nope-1'"),
        ("", "gpt-4o-mini", "unknown model ''"),
        ("gpt-4o", "claude-haiku-4-5", "belong to different providers"),
    ]:
        with pytest.raises(routes.RouteError, match=problem):
            routes.check(model, target)
