"""The admin's request list: its export (CSV, JSON, XLSX), one row per request."""

from __future__ import annotations

from functools import cached_property
from typing import Any

from import_export import fields, resources
from import_export.widgets import BooleanWidget, DecimalWidget, IntegerWidget

from telemetry.models import Event
from tokenpak_site.text import xlsx_cell

EXPORT_COLUMNS = (
    # tp_events
    "trace_id", "request_id", "ts", "created_at", "provider", "model", "requested_model",
    "sent_model", "agent_id", "session_id", "event_type", "endpoint", "stream", "status",
    "error_class", "upstream_status", "duration_ms", "ttfb_ms", "usage_source",
    "input_tokens", "output_tokens", "tokens_saved",
    # tp_usage
    "cache_read_tokens", "cache_write_tokens", "cache_write_1h_tokens", "reasoning_tokens",
    "estimated",
    # tp_costs
    "cost_usd", "cost_saved_usd", "pricing_source", "priced_as",
)


class PlainDecimalWidget(DecimalWidget):
    """Dollars as plain digits: str(Decimal) writes a zero cost as '0E-9', and the locale's
    number format could group or round them. XLSX still gets the number itself."""

    def render(self, value: Any, obj: Any = None, **kwargs: Any) -> Any:
        if value is None or kwargs.get("force_native_type"):
            return value
        return format(value, "f")


class EventResource(resources.ModelResource):
    """One row per request, with its usage detail and exact cost joined in. Never the stored
    prompts: an export is for accounting, and files travel."""

    cache_read_tokens = fields.Field("usage__cache_read_tokens", "cache_read_tokens",
                                     widget=IntegerWidget(coerce_to_string=False))
    cache_write_tokens = fields.Field("usage__cache_write_tokens", "cache_write_tokens",
                                      widget=IntegerWidget(coerce_to_string=False))
    cache_write_1h_tokens = fields.Field("usage__cache_write_1h_tokens", "cache_write_1h_tokens",
                                         widget=IntegerWidget(coerce_to_string=False))
    reasoning_tokens = fields.Field("usage__reasoning_tokens", "reasoning_tokens",
                                    widget=IntegerWidget(coerce_to_string=False))
    estimated = fields.Field("usage__estimated", "estimated",
                             widget=BooleanWidget(coerce_to_string=False))
    # Exact Decimal dollars from tp_costs: their sum is the totals' cost to the 1e-9.
    cost_usd = fields.Field("cost__cost_usd", "cost_usd", widget=PlainDecimalWidget())
    cost_saved_usd = fields.Field("cost__cost_saved_usd", "cost_saved_usd",
                                  widget=PlainDecimalWidget())
    pricing_source = fields.Field("cost__pricing_source", "pricing_source")
    priced_as = fields.Field("cost__priced_as", "priced_as")

    class Meta:
        model = Event
        fields = EXPORT_COLUMNS
        export_order = EXPORT_COLUMNS
        # Numbers stay numbers in JSON and XLSX; the time carries its offset.
        widgets = {
            **{name: {"coerce_to_string": False} for name in (
                "ts", "stream", "upstream_status", "duration_ms", "ttfb_ms", "input_tokens",
                "output_tokens", "tokens_saved")},
            "created_at": {"format": "%Y-%m-%dT%H:%M:%S%z"},
        }
        # Rows stream from the database this many at a time, never the whole ledger at once.
        chunk_size = 2000

    @cached_property
    def _columns(self) -> list[fields.Field]:
        return self.get_export_fields()

    def export_resource(self, instance: Event, selected_fields: Any = None, **kwargs: Any) -> list:
        # import-export finds each column again by name for every row and every cell, a third
        # of an export's time; the columns are fixed (and have no dehydrate_ methods), so the
        # row is just each field's value.
        if selected_fields:
            row = super().export_resource(instance, selected_fields, **kwargs)
        else:
            row = [field.export(instance, **kwargs) for field in self._columns]
        if kwargs.get("force_native_type"):
            # A spreadsheet file (import-export's binary formats: the XLSX download): text as
            # cells no spreadsheet runs as a formula, with what XLSX cannot hold escaped.
            return [xlsx_cell(v) if isinstance(v, str) else v for v in row]
        return row
