"""manage.py sync_pricing: LiteLLM price lists into tp_pricing, all or nothing."""

from __future__ import annotations

import json
from decimal import Decimal
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError

from telemetry import pricing
from telemetry.models import ModelPrice

D = Decimal

LITELLM = {
    "sample_spec": {
        "litellm_provider": "one of https://docs.litellm.ai/docs/providers",
        "mode": "one of: chat, embedding, ...",
        "input_cost_per_token": 0.0,
        "output_cost_per_token": 0.0,
    },
    "gpt-4o": {
        "litellm_provider": "openai",
        "mode": "chat",
        "input_cost_per_token": 2.5e-06,
        "output_cost_per_token": 1e-05,
        "cache_read_input_token_cost": 1.25e-06,
    },
    "claude-sonnet-4-5": {
        "litellm_provider": "anthropic",
        "mode": "chat",
        "input_cost_per_token": 3e-06,
        "output_cost_per_token": 1.5e-05,
        "cache_read_input_token_cost": 3e-07,
        "cache_creation_input_token_cost": 3.75e-06,
        "cache_creation_input_token_cost_above_1hr": 6e-06,
    },
    "gemini/gemini-2.5-flash": {
        "litellm_provider": "gemini",
        "mode": "chat",
        "input_cost_per_token": 3e-07,
        "output_cost_per_token": 2.5e-06,
        "cache_read_input_token_cost": 3e-08,
    },
    "dall-e-3": {
        "litellm_provider": "openai",
        "mode": "image_generation",
        "input_cost_per_pixel": 2.4e-08,
        "output_cost_per_token": 0.0,
    },
    "mistral/mistral-large-latest": {
        "litellm_provider": "mistral",
        "mode": "chat",
        "input_cost_per_token": 2e-06,
        "output_cost_per_token": 6e-06,
    },
}


@pytest.fixture(autouse=True)
def fresh_cache():
    pricing.clear_cache()
    yield
    pricing.clear_cache()


def write(tmp_path: Path, data: object, name: str = "prices.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(data), encoding="utf-8")
    return str(path)


def sync(*args: str) -> str:
    out = StringIO()
    call_command("sync_pricing", *args, stdout=out)
    return out.getvalue()


def table() -> list[tuple]:
    return list(
        ModelPrice.objects.order_by("model").values_list(
            "model",
            "provider",
            "input_per_mtok",
            "output_per_mtok",
            "cache_read_per_mtok",
            "cache_write_per_mtok",
            "cache_write_1h_per_mtok",
            "source",
        )
    )


@pytest.mark.django_db
def test_it_imports_text_model_prices_of_the_default_providers(tmp_path):
    path = write(tmp_path, LITELLM)
    out = sync(path)
    assert out == f"sync_pricing: 3 prices imported (3 new, 0 updated) from {path}\n"
    assert table() == [
        ("claude-sonnet-4-5", "anthropic", D("3"), D("15"), D("0.3"), D("3.75"), D("6"), "sync"),
        ("gemini-2.5-flash", "google", D("0.3"), D("2.5"), D("0.03"), None, None, "sync"),
        ("gpt-4o", "openai", D("2.5"), D("10"), D("1.25"), None, None, "sync"),
    ]


@pytest.mark.django_db
def test_it_updates_existing_rows(tmp_path):
    ModelPrice.objects.create(model="gpt-4o", input_per_mtok=1, output_per_mtok=2, source="admin")
    path = write(tmp_path, LITELLM)
    assert sync(path).startswith("sync_pricing: 3 prices imported (2 new, 1 updated)")
    row = ModelPrice.objects.get(model="gpt-4o")
    assert (row.input_per_mtok, row.output_per_mtok, row.source) == (D("2.5"), D("10"), "sync")
    # Running it again changes nothing but the counts.
    before = table()
    assert sync(path).startswith("sync_pricing: 3 prices imported (0 new, 3 updated)")
    assert table() == before


@pytest.mark.django_db
def test_it_imports_only_the_chosen_providers(tmp_path):
    path = write(tmp_path, LITELLM)
    assert "1 prices imported" in sync(path, "--provider", "anthropic")
    assert [r[0] for r in table()] == ["claude-sonnet-4-5"]
    assert "2 prices imported (1 new, 1 updated)" in sync(path, "--provider", "gemini,anthropic")
    assert "1 prices imported" in sync(path, "--provider", "mistral")
    assert ModelPrice.objects.get(model="mistral-large-latest").provider == "mistral"


@pytest.mark.django_db
def test_it_writes_nothing_on_a_dry_run(tmp_path):
    ModelPrice.objects.create(model="gpt-4o", input_per_mtok=1, output_per_mtok=2)
    before = table()
    path = write(tmp_path, LITELLM)
    out = sync(path, "--dry-run")
    assert out == (
        f"sync_pricing: 3 prices would be imported (2 new, 1 updated) from {path} "
        "(dry run, nothing written)\n"
    )
    assert table() == before


@pytest.mark.django_db
def test_it_makes_imported_prices_win_at_once(tmp_path):
    assert pricing.resolve("gpt-4o").source == "catalog"  # the override cache is now warm
    data = {"gpt-4o": {**LITELLM["gpt-4o"], "input_cost_per_token": 2e-06}}
    sync(write(tmp_path, data))
    price = pricing.resolve("gpt-4o-2024-08-06")
    assert (price.source, price.priced_as, price.input) == ("override", "gpt-4o", D("2"))


def _bad_entry(**fields: object) -> dict:
    # Good entries first: a command writing row by row would already have written them.
    return {**LITELLM, "zz-bad": {"litellm_provider": "openai", "mode": "chat", **fields}}


BAD_FILES = [
    pytest.param(None, "cannot read", id="missing"),
    pytest.param("{not json", "is not valid JSON", id="not-json"),
    pytest.param(b"\xff\xfe\x00garbage", "is not valid JSON", id="binary"),
    pytest.param([LITELLM], "not a LiteLLM price list", id="array"),
    pytest.param("null", "not a LiteLLM price list", id="null"),
    pytest.param(
        _bad_entry(input_cost_per_token=-1e-06, output_cost_per_token=1e-06),
        "zz-bad.input_cost_per_token: price -1e-06 is negative",
        id="negative",
    ),
    pytest.param(
        _bad_entry(input_cost_per_token="0.000001", output_cost_per_token=1e-06),
        "zz-bad.input_cost_per_token: price '0.000001' is not a number",
        id="string",
    ),
    pytest.param(
        _bad_entry(
            input_cost_per_token=1e-06,
            output_cost_per_token=1e-06,
            cache_read_input_token_cost=True,
        ),
        "zz-bad.cache_read_input_token_cost: price True is not a number",
        id="bool",
    ),
    pytest.param(
        _bad_entry(input_cost_per_token=1e-13, output_cost_per_token=1e-06),
        "zz-bad input price \\$0.0000001/MTok does not fit",
        id="too-precise",
    ),
    pytest.param(
        _bad_entry(input_cost_per_token=1000, output_cost_per_token=1e-06),
        "zz-bad input price \\$1000000000/MTok does not fit",
        id="too-large",
    ),
]


@pytest.mark.django_db
@pytest.mark.parametrize("content, message", BAD_FILES)
def test_it_rejects_a_bad_file_and_changes_nothing(tmp_path, content, message):
    ModelPrice.objects.create(model="gpt-4o", input_per_mtok=1, output_per_mtok=2, source="admin")
    before = table()
    path = tmp_path / "prices.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content)
    elif content is not None:
        path.write_text(json.dumps(content))
    with pytest.raises(CommandError, match=message) as raised:
        sync(str(path))
    assert "\n" not in str(raised.value)
    assert str(raised.value).startswith("sync_pricing: ")
    assert table() == before


@pytest.mark.django_db
def test_it_rolls_back_everything_when_the_database_fails_midway(tmp_path, monkeypatch):
    ModelPrice.objects.create(model="gpt-4o", input_per_mtok=1, output_per_mtok=2, source="admin")
    before = table()
    real = ModelPrice.objects.update_or_create
    calls = []

    def flaky(**kwargs):
        calls.append(kwargs["model"])
        if len(calls) == 3:
            raise DatabaseError("disk I/O error")
        return real(**kwargs)

    monkeypatch.setattr(ModelPrice.objects, "update_or_create", flaky)
    with pytest.raises(CommandError, match="nothing imported, database error: disk I/O error"):
        sync(write(tmp_path, LITELLM))
    assert len(calls) == 3
    assert table() == before


@pytest.mark.django_db
def test_it_refuses_an_empty_provider_list(tmp_path):
    with pytest.raises(CommandError, match="--provider names no provider"):
        sync(write(tmp_path, LITELLM), "--provider", " , ")
