"""Import a LiteLLM price list into tp_pricing, where it wins over the shipped catalog.

    python manage.py sync_pricing model_prices_and_context_window.json [--provider ...] [--dry-run]

The file is checked completely before anything is written, and written in one transaction, so a
bad file changes nothing. Rows are matched by model name; an existing row (admin-edited too) is
overwritten and marked source="sync".
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError, transaction

from telemetry import pricing
from telemetry.models import PRICE, ModelPrice

_MODEL_MAX_LENGTH = cast(int, ModelPrice._meta.get_field("model").max_length)  # a CharField
_COLUMNS = {
    "input": "input_per_mtok",
    "output": "output_per_mtok",
    "cache_read": "cache_read_per_mtok",
    "cache_write": "cache_write_per_mtok",
    "cache_write_1h": "cache_write_1h_per_mtok",
}


class Command(BaseCommand):
    help = "Import per-token prices from a LiteLLM model_prices_and_context_window.json file."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", help="LiteLLM-format price list (JSON)")
        parser.add_argument(
            "--provider",
            default="openai,anthropic,gemini",
            help="comma-separated LiteLLM provider names to import (default: %(default)s)",
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="check the file and report, write nothing"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        path = options["file"]
        providers = {p.strip().lower() for p in options["provider"].split(",") if p.strip()}
        if not providers:
            raise CommandError("sync_pricing: --provider names no provider")
        rows = _rows(path, _load(path), providers)

        # tp_pricing is small; one query beats an IN list past SQLite's variable limit.
        existing = set(ModelPrice.objects.values_list("model", flat=True))
        new = len(rows.keys() - existing)
        if options["dry_run"]:
            self.stdout.write(
                f"sync_pricing: {len(rows)} prices would be imported ({new} new, "
                f"{len(rows) - new} updated) from {path} (dry run, nothing written)"
            )
            return

        created = 0
        try:
            with transaction.atomic():
                for model, defaults in rows.items():
                    _, was_created = ModelPrice.objects.update_or_create(
                        model=model, defaults=defaults
                    )
                    created += was_created
        except DatabaseError as e:
            raise CommandError(f"sync_pricing: nothing imported, database error: {e}") from None
        # The ledger writer would see the new prices within seconds anyway; this makes it now.
        pricing.clear_cache()
        self.stdout.write(
            f"sync_pricing: {len(rows)} prices imported ({created} new, "
            f"{len(rows) - created} updated) from {path}"
        )


def _load(path: str) -> dict:
    try:
        data = json.loads(Path(path).read_bytes())
    except OSError as e:
        raise CommandError(f"sync_pricing: cannot read {path}: {e.strerror or e}") from None
    except ValueError as e:
        raise CommandError(f"sync_pricing: {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise CommandError(
            f"sync_pricing: {path} is not a LiteLLM price list (expected a JSON object of models)"
        )
    return data


def _rows(path: str, data: dict, providers: set[str]) -> dict[str, dict[str, Any]]:
    """ModelPrice field values per model, every one checked to fit tp_pricing's columns."""
    try:
        entries = pricing.parse_litellm(data, providers)
    except pricing.PricingError as e:
        raise CommandError(f"sync_pricing: {path}: {e}") from None
    rows: dict[str, dict[str, Any]] = {}
    for model, entry in entries.items():
        if len(model) > _MODEL_MAX_LENGTH:
            raise CommandError(
                f"sync_pricing: {path}: model name longer than {_MODEL_MAX_LENGTH} characters: "
                f"{model[:40]}..."
            )
        row: dict[str, Any] = {"provider": entry["provider"], "source": "sync"}
        for field, column in _COLUMNS.items():
            row[column] = _fit(path, model, field, entry[field])
        rows[model] = row
    return rows


def _fit(path: str, model: str, field: str, value: str | None) -> Decimal | None:
    # Checked here, not left to the database: SQLite would store an out-of-range value silently
    # and PostgreSQL would fail halfway through the import.
    if value is None:
        return None
    price = Decimal(value)
    places = PRICE["decimal_places"]
    whole_digits = PRICE["max_digits"] - places
    exponent = cast(int, price.as_tuple().exponent)  # per_mtok() gave a finite number
    if -exponent > places or price >= Decimal(10) ** whole_digits:
        raise CommandError(
            f"sync_pricing: {path}: {model} {field} price ${value}/MTok does not fit tp_pricing "
            f"(at most {whole_digits} digits before and {places} after the decimal point)"
        )
    return price
