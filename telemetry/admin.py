"""The admin: price overrides (editable) and the ledger's audit browser (read-only).

The request list must stay fast on a ledger of millions of rows, so every query it makes is
served by an index: figures come from the copies on tp_events (no joins), the row count comes
from the totals the page shows anyway (no extra COUNT), filter choices are DISTINCT over indexed
columns, and the date hierarchy is built from the first and last timestamps alone.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from functools import cached_property
from typing import Any, cast

from django.contrib import admin
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import FieldError, ValidationError
from django.core.paginator import Paginator
from django.db import DataError
from django.db.models import Q, QuerySet
from django.http import (
    HttpRequest,
    HttpResponseBadRequest,
    HttpResponseBase,
    StreamingHttpResponse,
)
from django.utils import formats
from django.utils.text import capfirst
from import_export.admin import ExportMixin
from import_export.formats import base_formats
from import_export.forms import ExportForm

from telemetry import exporting, reports
from telemetry.admin_export import EventResource
from telemetry.admin_filters import (
    AgentFilter,
    CompressedFilter,
    DefaultPricedFilter,
    TimeFilter,
    ValuesFilter,
)
from telemetry.models import (
    Cost,
    Event,
    ModelPrice,
    RecipeHit,
    Segment,
    Usage,
)


@admin.register(ModelPrice)
class ModelPriceAdmin(admin.ModelAdmin):
    """Prices here win over the shipped catalog, for every name that resolves to the model."""

    list_display = (
        "model",
        "provider",
        "input_per_mtok",
        "output_per_mtok",
        "cache_read_per_mtok",
        "cache_write_per_mtok",
        "cache_write_1h_per_mtok",
        "source",
        "updated_at",
    )
    list_filter = ("provider", "source")
    search_fields = ("model",)
    readonly_fields = ("updated_at",)

    def save_model(self, request: HttpRequest, obj: ModelPrice, form: Any, change: bool
                   ) -> None:
        obj.source = "admin"
        super().save_model(request, obj, form, change)


# --- the request list: count, totals, dates ---------------------------------------------------


class LedgerPaginator(Paginator):
    """Pages counted from the totals shown above the list: one aggregate over the covering ts
    index serves both, instead of a COUNT(*) and then the sums."""

    object_list: QuerySet[Event]  # what LedgerChangeList pages

    @cached_property
    def totals(self) -> reports.Totals:
        return reports.totals(self.object_list)

    @cached_property
    def count(self) -> int:
        return self.totals.requests


class LedgerChangeList(ChangeList):
    DATE_PARAMS = ("created_at__year", "created_at__month", "created_at__day")

    def get_filters(self, request: HttpRequest) -> tuple:
        specs, has_filters, params, duplicates, active = super().get_filters(request)
        lookups = cast(dict[str, Any], params)  # lists of values since Django 5.0; stubs: one
        # The date hierarchy narrows created_at, whose index does not cover the figures; the
        # same instants on ts use the covering index, so a month's totals never read the table.
        for op in ("gte", "lt"):
            bound = lookups.get(f"created_at__{op}")
            if bound and all(isinstance(v, datetime) for v in bound):
                lookups[f"ts__{op}"] = [v.timestamp() for v in lookups.pop(f"created_at__{op}")]
        return specs, has_filters, lookups, duplicates, active

    def get_queryset(self, request: HttpRequest, exclude_parameters: Any = None) -> QuerySet:
        # Stored prompts can be megabytes each; the list and the exports never show them.
        qs = super().get_queryset(request, exclude_parameters)
        return qs.defer("request_body", "response_body")

    @cached_property
    def totals(self) -> list[tuple[str, str]]:
        t = self.paginator.totals
        return [
            ("requests", reports.count(t.requests)),
            ("tokens in", reports.count(t.input_tokens)),
            ("tokens out", reports.count(t.output_tokens)),
            ("cost", reports.money(t.cost_usd)),
            ("saved", reports.money(t.cost_saved_usd)),
            ("tokens saved", f"{reports.count(t.tokens_saved)} ({reports.pct(t.savings_pct)})"),
        ]

    @cached_property
    def range_params(self) -> list[tuple[str, str]]:
        """The other filters, carried as hidden fields by the since/until form."""
        skip = {"since", "until", "period", "p"}
        return [(k, v) for k, v in self.params.items() if k not in skip]

    @cached_property
    def date_links(self) -> dict[str, Any]:
        """Django's date hierarchy without its SELECT DISTINCT over a date function of every
        row: the levels between the first and last row, from two index lookups."""
        year, month, day = (self.params.get(p) for p in self.DATE_PARAMS)

        def link(**params: Any) -> str:
            values = {f"created_at__{k}": v for k, v in params.items()}
            return self.get_query_string(values, ["created_at__"])

        first = self.queryset.order_by("ts").values_list("ts", flat=True).first()
        last = self.queryset.order_by("-ts").values_list("ts", flat=True).first()
        if first is None or last is None:
            return {"show": bool(year), "back": {"link": link(), "title": "All dates"},
                    "choices": []}
        tz = reports.zone()
        lo, hi = datetime.fromtimestamp(first, tz), datetime.fromtimestamp(last, tz)
        if not (year or month or day) and lo.year == hi.year:
            year = str(lo.year)
            if lo.month == hi.month:
                month = str(lo.month)

        def title(d: datetime, fmt: str) -> str:
            return capfirst(formats.date_format(d, fmt))

        if year and month and day:
            return {"show": True, "back": {"link": link(year=year, month=month),
                                           "title": title(lo, "YEAR_MONTH_FORMAT")},
                    "choices": [{"title": title(lo, "MONTH_DAY_FORMAT")}]}
        if year and month:
            days = [lo + timedelta(days=n) for n in range(hi.day - lo.day + 1)]
            return {"show": True, "back": {"link": link(year=year), "title": year},
                    "choices": [{"link": link(year=year, month=month, day=d.day),
                                 "title": title(d, "MONTH_DAY_FORMAT")} for d in days]}
        if year:
            months = [lo.replace(day=1, month=m) for m in range(lo.month, hi.month + 1)]
            return {"show": True, "back": {"link": link(), "title": "All dates"},
                    "choices": [{"link": link(year=year, month=d.month),
                                 "title": title(d, "YEAR_MONTH_FORMAT")} for d in months]}
        return {"show": True, "back": None,
                "choices": [{"link": link(year=y), "title": str(y)}
                            for y in range(lo.year, hi.year + 1)]}




# --- the request list: read-only detail -------------------------------------------------------


class ReadOnlyInline:
    """A ledger row's parts are shown, never edited: they are written only by the proxy."""

    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class UsageInline(ReadOnlyInline, admin.StackedInline):
    model = Usage
    verbose_name = verbose_name_plural = "usage (tp_usage)"
    fields = (
        ("input_tokens", "output_tokens"),
        ("cache_read_tokens", "cache_write_tokens", "cache_write_1h_tokens", "cache_hit"),
        ("reasoning_tokens", "estimated"),
        ("tokens_saved", "savings_pct", "saved_estimated"),
    )


class CostInline(ReadOnlyInline, admin.StackedInline):
    model = Cost
    verbose_name = verbose_name_plural = "cost (tp_costs)"
    fields = (("cost_usd", "cost_saved_usd"), ("pricing_source", "priced_as"))


class SegmentInline(ReadOnlyInline, admin.TabularInline):
    model = Segment
    verbose_name = "segment (tp_segments)"
    verbose_name_plural = "segments (tp_segments)"
    fields = ("segment_type", "tokens_raw", "tokens_after")


class RecipeHitInline(ReadOnlyInline, admin.TabularInline):
    model = RecipeHit
    verbose_name = "recipe fired (tp_recipe_hits)"
    verbose_name_plural = "recipes fired (tp_recipe_hits)"
    fields = ("recipe", "hits")


@admin.register(Event)
class EventAdmin(ExportMixin, admin.ModelAdmin):
    """The ledger, one row per request. Read-only: rows leave only by retention."""

    list_display = ("time", "provider", "model", "agent", "status", "tokens_in", "tokens_out",
                    "cost_usd", "saved_usd", "duration")
    list_filter = (
        TimeFilter,
        ("provider", ValuesFilter),
        ("model", ValuesFilter),
        ("agent_id", AgentFilter),
        "status",
        CompressedFilter,
        DefaultPricedFilter,
    )
    # Only to show the search box: get_search_results does the index-friendly matching.
    search_fields = ("trace_id", "request_id", "model", "agent_id")
    search_help_text = (
        "Trace id, model or agent: exact, or how one starts. Otherwise a provider's request id."
    )
    date_hierarchy = "created_at"
    ordering = ("-ts",)
    list_per_page = 100
    paginator = LedgerPaginator
    show_full_result_count = False
    show_facets = admin.ShowFacets.ALLOW
    inlines = (UsageInline, CostInline, SegmentInline, RecipeHitInline)
    fieldsets = (
        ("Request", {"fields": (
            ("trace_id", "request_id"), ("time", "created_at"), ("provider", "event_type"),
            ("model", "requested_model", "sent_model"), ("agent_id", "session_id"),
            ("endpoint", "stream"),
        )}),
        ("Outcome", {"fields": (
            ("status", "error_class", "upstream_status"), ("duration_ms", "ttfb_ms"),
            ("usage_source", "input_tokens", "output_tokens", "tokens_saved"),
            ("cost_usd", "saved_usd"),
        )}),
        ("Stored bodies (only with telemetry.store_prompts)", {
            "classes": ("collapse",), "fields": ("request_body", "response_body"),
        }),
    )
    readonly_fields = ("time", "cost_usd", "saved_usd")

    # Extends import-export's change list (the Export button) with the totals and dates.
    import_export_change_list_template = "admin/telemetry/event/change_list.html"

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        fieldsets = super().get_fieldsets(request, obj)
        if obj is not None and obj.request_body is None and obj.response_body is None:
            return fieldsets[:-1]  # the bodies' section says nothing when none are stored
        return fieldsets

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return LedgerChangeList

    def _do_file_export(self, file_format: Any, request: HttpRequest, queryset: Any,
                        export_form: Any = None) -> HttpResponseBase:
        """CSV and JSON stream from the database as they are read (the same rows as
        `tokenpak export`); XLSX, a zip, is assembled by import-export from chunked reads."""
        fmt = file_format.get_extension()
        if fmt not in exporting.FORMATS:
            return super()._do_file_export(file_format, request, queryset, export_form)
        response = StreamingHttpResponse(exporting.astream(queryset, fmt),
                                         content_type=file_format.get_content_type())
        response["Content-Disposition"] = (
            f'attachment; filename="{self.get_export_filename(request, queryset, file_format)}"'
        )
        return response

    # Read-only: viewable, never added, changed or deleted here.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="time", ordering="ts")
    def time(self, obj: Event) -> str:
        return datetime.fromtimestamp(obj.ts, reports.zone()).strftime("%Y-%m-%d %H:%M:%S")

    @admin.display(description="agent", ordering="agent_id")
    def agent(self, obj: Event) -> str:
        return obj.agent_id

    @admin.display(description="tokens in", ordering="input_tokens")
    def tokens_in(self, obj: Event) -> str:
        return reports.count(obj.input_tokens)

    @admin.display(description="tokens out", ordering="output_tokens")
    def tokens_out(self, obj: Event) -> str:
        return reports.count(obj.output_tokens)

    # Not named cost: that is Event's link to its tp_costs row, which the admin would show.
    @admin.display(description="cost", ordering="cost_nano_usd")
    def cost_usd(self, obj: Event) -> str:
        return reports.money(reports.usd(obj.cost_nano_usd))

    @admin.display(description="saved", ordering="saved_nano_usd")
    def saved_usd(self, obj: Event) -> str:
        return reports.money(reports.usd(obj.saved_nano_usd))

    @admin.display(description="duration", ordering="duration_ms")
    def duration(self, obj: Event) -> str:
        return f"{obj.duration_ms:,.0f} ms"

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Event], search_term: str
    ) -> tuple[QuerySet[Event], bool]:
        """Every word must match a trace id, model or agent exactly or as its start; a word
        that matches none of those anywhere in the ledger is looked up as a provider's request
        id (exact). Prefixes are index ranges, not LIKE, which neither SQLite (case folding)
        nor PostgreSQL (outside the C collation) can serve from an index."""
        for term in search_term.split():
            match = Q()
            for field in ("trace_id", "model", "agent_id"):
                # In byte order (SQLite's and C's), the strings that start with term are
                # exactly those in [term, term + the highest code point).
                match |= Q(**{f"{field}__gte": term, f"{field}__lt": term + "\U0010ffff"})
            if not Event.objects.filter(match).exists():
                # request_id has no index, so it is scanned only when nothing indexed matched,
                # and alone: inside the page's ORDER BY ts the scan would walk the ts index and
                # read every row through it (seconds, not a tenth of one, on a million rows).
                # A provider's request id names one request, so the bound is never reached.
                ids = Event.objects.filter(request_id=term).values_list("pk", flat=True)
                match = Q(pk__in=list(ids[:1000]))
            queryset = queryset.filter(match)
        return queryset, False

    # Export: the current filtered list as CSV, JSON or XLSX. No import: the ledger is written
    # only by the proxy.
    resource_classes = [EventResource]
    export_form_class = ExportForm

    def get_export_formats(self) -> list[type[base_formats.Format]]:
        return [base_formats.CSV, base_formats.JSON, base_formats.XLSX]

    def get_export_queryset(self, request: HttpRequest) -> QuerySet[Event]:
        qs = super().get_export_queryset(request).select_related("usage", "cost")
        # A value the database refuses (a NUL on PostgreSQL, a bad regex) fails here, as a
        # 400, rather than in the middle of a streamed download.
        qs.exists()
        return qs

    def lookup_allowed(self, lookup: str, value: str, request: HttpRequest | None = None
                       ) -> bool:
        # No filter offers a regular expression, and each database parses its own dialect
        # (a bad one fails only when rows are read); PostgreSQL refuses a NUL in a query's
        # text. Both refused (400), on the list and its export, on either database.
        if lookup.rsplit("__", 1)[-1] in ("regex", "iregex") or "\x00" in str(value):
            return False
        return super().lookup_allowed(lookup, value, request)

    def export_action(self, request: HttpRequest) -> HttpResponseBase:
        """The export page's query string holds the list's filters. The list sends a bad one
        (`?format=0`, `?nope=1`, `?ts__gt=x`) back to itself with ?e=1; import-export lets the
        same error through as a 500: here it is a 400 saying which."""
        try:
            return super().export_action(request)
        except (IncorrectLookupParameters, FieldError, ValidationError, ValueError,
                DataError) as e:
            return HttpResponseBadRequest(f"Bad filter in the export's address: {e}",
                                          content_type="text/plain; charset=utf-8")

    def get_export_filename(self, request: HttpRequest, queryset: QuerySet, file_format: Any
                            ) -> str:
        stamp = datetime.now(reports.zone()).strftime("%Y-%m-%d-%H%M")
        return f"tokenpak-requests-{stamp}.{file_format.get_extension()}"
