"""config.yaml's `budget:` block: checked at startup, applied by serving processes."""

from __future__ import annotations

from decimal import Decimal

import openai
import pytest
import yaml

from budgets.declared import Declared, parse
from budgets.models import Budget
from tokenpak_site.conf import ConfigError, load_file

SEED = {"monthly_usd": 50, "alert_at_pct": 80, "on_exceeded": "block"}


def test_it_reads_the_seeds_keys():
    assert parse(SEED) == [Declared("", "monthly", Decimal("50"), 80, "block",
                                    "budget.monthly_usd")]


def test_it_reads_every_period_and_agent_budgets_with_the_blocks_defaults():
    found = parse({"daily_usd": "2.50", "weekly_usd": 10, "on_exceeded": "route-cheap",
                   "agents": {"coder": {"monthly_usd": 20, "alert_at_pct": "90%"},
                              "token-counter": {"daily_usd": 0, "on_exceeded": "warn"}}})
    assert {(d.agent, d.period): (d.limit_usd, d.alert_at_pct, d.on_exceeded) for d in found} == {
        ("", "daily"): (Decimal("2.5"), 80, "route-cheap"),
        ("", "weekly"): (Decimal("10"), 80, "route-cheap"),
        ("coder", "monthly"): (Decimal("20"), 90, "route-cheap"),
        ("token-counter", "daily"): (Decimal("0"), 80, "warn"),
    }


@pytest.mark.parametrize("block, message", [
    ({"monthly_usd": -5}, "config.yaml key budget.monthly_usd: bad limit '-5': use a number "
     "of dollars of 0 or more, like 50 or 12.50"),
    ({"monthly_usd": "lots"}, "config.yaml key budget.monthly_usd: bad limit 'lots': use a "
     "number of dollars of 0 or more, like 50 or 12.50"),
    ({"monthly_usd": 5, "alert_at_pct": 150}, "config.yaml key budget.alert_at_pct: bad "
     "percentage '150': use a whole number from 1 to 100, like 80%"),
    ({"monthly_usd": 5, "on_exceeded": "shout"}, "config.yaml key budget.on_exceeded: unknown "
     "action 'shout': use warn, block, route-cheap"),
    ({"montly_usd": 5}, "config.yaml key budget.montly_usd: unknown; known: daily_usd, "
     "weekly_usd, monthly_usd, alert_at_pct, on_exceeded, webhook_url, agents"),
    ({"agents": {"coder": {"daily_usd": True}}}, "config.yaml key "
     "budget.agents.coder.daily_usd: bad limit 'True': use a number of dollars of 0 or more, "
     "like 50 or 12.50"),
    ({"agents": ["coder"]}, "config.yaml key budget.agents: expected a mapping of agent names"),
    ("fifty", "config.yaml key budget: expected a mapping (monthly_usd: 50, …)"),
])
def test_it_names_the_key_of_a_bad_value(block, message):
    with pytest.raises(ConfigError) as caught:
        parse(block)
    assert str(caught.value) == message


def test_it_does_not_take_an_agent_named_token_for_a_credential(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"budget": {"agents": {"token-bot": {"daily_usd": 1}}}}))
    assert load_file(path)["budget.agents.token-bot.daily_usd"] == 1
    path.write_text(yaml.safe_dump({"budget": {"api_key": "x"}}))
    with pytest.raises(ConfigError, match="looks like a credential"):
        load_file(path)


def _server_with(start_server, tmp_path, block) -> object:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    (home / "config.yaml").write_text(yaml.safe_dump({"budget": block}))
    return start_server(home=home)


def test_it_enforces_the_files_budgets_and_marks_them(start_server, fake, rows, tmp_path):
    server = _server_with(start_server, tmp_path, {"monthly_usd": 0, "on_exceeded": "block"})
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="sk-test", max_retries=0)
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="gpt-4o-mini",
                                       messages=[{"role": "user", "content": "hi"}])
    assert fake.log == []
    [budget] = Budget.objects.all()
    assert (budget.limit_usd, budget.on_exceeded, budget.source) == (0, "block", "config.yaml")
    server.stop()
    # The file changed: the next start follows it.
    server = _server_with(start_server, tmp_path, {"agents": {"coder": {"daily_usd": 3}}})
    assert client.with_options(base_url=server.url + "/v1").chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert [(b.agent, b.period, b.limit_usd) for b in Budget.objects.all()] == [
        ("coder", "daily", 3)]
    [_, ok] = rows(2)
    assert ok.status == "ok"


def test_it_will_not_start_with_a_bad_budget_block(start_server, fake, tmp_path):
    with pytest.raises(RuntimeError) as caught:
        _server_with(start_server, tmp_path, {"monthly_usd": -1})
    assert ("tokenpak: configuration error: config.yaml key budget.monthly_usd: bad limit '-1'"
            in str(caught.value))
