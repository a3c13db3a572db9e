"""manage.py purge --telemetry: every ledger row goes, prices and users stay, and it asks."""

from __future__ import annotations

from decimal import Decimal
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError

from telemetry.models import Cost, Event, ModelPrice, RecipeHit, Segment, Usage
from tests.test_prune import add_segments, age


class Terminal(StringIO):
    """A stdin that says it is a terminal; the answer itself comes from input()."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def ledger(traffic: list[Event]) -> list[str]:
    ids = [e.trace_id for e in traffic]
    age(ids[:3], 30)  # old and new alike: purge is not about age
    add_segments(ids)
    ModelPrice.objects.create(
        model="my-finetune", input_per_mtok=Decimal("1"), output_per_mtok=Decimal("2")
    )
    get_user_model().objects.create_superuser("admin", "admin@example.com", "pw-for-tests")
    return ids


def purge(**options: object) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("purge", stdout=out, stderr=err, **options)
    return out.getvalue(), err.getvalue()


def ledger_counts() -> dict[str, int]:
    return {m._meta.db_table: m.objects.count() for m in (Event, Usage, Cost, Segment, RecipeHit)}


EMPTY = {"tp_events": 0, "tp_usage": 0, "tp_costs": 0, "tp_segments": 0, "tp_recipe_hits": 0}
FULL = {"tp_events": 7, "tp_usage": 7, "tp_costs": 7, "tp_segments": 14, "tp_recipe_hits": 7}


def kept_prices_and_users() -> bool:
    return (
        ModelPrice.objects.filter(model="my-finetune").exists()
        and get_user_model().objects.filter(username="admin").exists()
    )


def test_it_deletes_all_telemetry_with_yes_and_keeps_prices_and_users(ledger):
    out, err = purge(telemetry=True, yes=True)

    assert out == (
        "purge: deleted 7 requests with their usage, cost and segment rows; "
        "prices, settings and users kept\n"
    )
    assert err == ""
    assert ledger_counts() == EMPTY
    assert kept_prices_and_users()


def test_it_asks_first_and_deletes_on_y(ledger, monkeypatch):
    monkeypatch.setattr("builtins.input", lambda *a: "y")

    out, _ = purge(telemetry=True, stdin=Terminal())

    assert out.startswith("Delete all 7 ledger rows? [y/N] purge: deleted 7 requests")
    assert ledger_counts() == EMPTY
    assert kept_prices_and_users()


@pytest.mark.parametrize("answer", ["n", "", "no", "whatever"])
def test_it_deletes_nothing_unless_the_answer_is_y(ledger, monkeypatch, answer):
    monkeypatch.setattr("builtins.input", lambda *a: answer)

    out, _ = purge(telemetry=True, stdin=Terminal())

    assert out == "Delete all 7 ledger rows? [y/N] purge: cancelled, nothing deleted\n"
    assert ledger_counts() == FULL


def test_it_deletes_nothing_when_the_question_gets_end_of_file(ledger, monkeypatch):
    def eof(*args: object) -> str:
        raise EOFError

    monkeypatch.setattr("builtins.input", eof)

    out, _ = purge(telemetry=True, stdin=Terminal())

    assert out.endswith("purge: cancelled, nothing deleted\n")
    assert ledger_counts() == FULL


def test_it_refuses_to_ask_without_a_terminal(ledger, monkeypatch):
    monkeypatch.setattr("builtins.input", lambda *a: pytest.fail("asked without a terminal"))

    with pytest.raises(CommandError, match=r"^purge: .* stdin is not a terminal .*: pass --yes$"):
        purge(telemetry=True, stdin=StringIO("y\n"))
    assert ledger_counts() == FULL


def test_it_explains_what_it_does_without_telemetry(ledger):
    with pytest.raises(CommandError, match=r"^purge: nothing chosen: purge --telemetry deletes"):
        purge(yes=True)
    assert ledger_counts() == FULL


def test_it_purges_in_chunks_with_a_progress_line(ledger):
    out, err = purge(telemetry=True, yes=True, chunk=3)

    assert err.splitlines() == ["purged 3 / 7", "purged 6 / 7", "purged 7 / 7"]
    assert out.startswith("purge: deleted 7 requests")
    assert ledger_counts() == EMPTY
    assert kept_prices_and_users()


def test_it_says_so_when_the_ledger_is_already_empty(transactional_db):
    out, _ = purge(telemetry=True)  # no --yes, no terminal: nothing to ask about

    assert out == "purge: the ledger is already empty\n"


def test_it_resets_budget_spend_with_the_rows_and_keeps_the_budgets(ledger):
    from budgets import standings
    from budgets.models import Budget, Spend

    Budget.objects.create(period="monthly", limit_usd=Decimal("50"))
    [before] = standings.current()
    month = Event.objects.filter(ts__gte=before.start.timestamp())
    assert before.spent_nano == sum(month.values_list("cost_nano_usd", flat=True)) > 0
    purge(telemetry=True, yes=True)
    assert not Spend.objects.exists() and Budget.objects.count() == 1
    [after] = standings.current()
    assert after.spent_nano == 0
