"""The ledger. Table and column names are a public contract: people query the SQLite file.

Seed columns keep their names and types (`ts` REAL unix time, `cache_hit` boolean); everything
else is an addition. Only telemetry.writer writes these rows while serving.
"""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypedDict

from django.db import models

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper
    from django.db.models.sql.compiler import SQLCompiler

class DecimalArgs(TypedDict, total=False):
    """A DecimalField's arguments, shared by the columns holding one kind of amount."""

    max_digits: int
    decimal_places: int
    default: Decimal


USD: DecimalArgs = {"max_digits": 20, "decimal_places": 9, "default": Decimal("0")}


class Status(models.TextChoices):
    OK = "ok"
    ERROR = "error", "provider error"  # the provider answered with a non-2xx status
    INVALID_REQUEST = "invalid_request"  # refused by TokenPak, nothing forwarded
    BLOCKED = "blocked"  # a budget with on_exceeded=block refused it; nothing forwarded
    UPSTREAM_UNREACHABLE = "upstream_unreachable"
    UPSTREAM_TIMEOUT = "upstream_timeout"
    STREAM_CUT = "stream_cut"  # the provider ended a stream before it was complete
    CLIENT_CLOSED = "client_closed"  # the client went away before the response was complete


class UsageSource(models.TextChoices):
    PROVIDER = "provider"  # exact: reported by the provider
    ESTIMATED = "estimated"  # counted locally from what was seen (cut streams)
    NONE = "none"  # nothing to count (errors, model lists)


class PricingSource(models.TextChoices):
    CATALOG = "catalog"
    OVERRIDE = "override"  # a row in tp_pricing (admin or sync_pricing)
    DEFAULT = "default"  # unknown model: $3 / $15 per MTok
    NONE = "none"  # no tokens, nothing to price


TOTALS = ["cost_nano_usd", "input_tokens", "output_tokens", "tokens_saved", "saved_nano_usd"]
TIMINGS = ["duration_ms", "ttfb_ms", "compress_ms"]
NANO = Decimal("1e9")
QUARTER_HOUR = 900  # every time zone's offset is a whole number of quarter hours


class QuarterHour(models.Func):
    """ts → its quarter-hour bucket. Written exactly as the tp_events_quarter index has it, so
    the database reads that index in bucket order and groups without sorting."""

    output_field = models.BigIntegerField()

    def as_sql(  # type: ignore[override]  # writes its SQL: none of Func's template args
        self, compiler: SQLCompiler, connection: BaseDatabaseWrapper, **extra: Any
    ) -> tuple[str, Any]:
        sql, params = compiler.compile(self.source_expressions[0])
        if connection.vendor == "sqlite":  # integer division truncates; ts is never negative
            return f"(CAST({sql} AS INTEGER) / {QUARTER_HOUR})", params
        return f"FLOOR({sql} / {QUARTER_HOUR})", params


class Event(models.Model):
    trace_id = models.CharField(max_length=32, primary_key=True)
    request_id = models.CharField(max_length=128, blank=True, default="")
    event_type = models.CharField(max_length=32)
    ts = models.FloatField()
    # ts as a datetime, for the admin's date hierarchy and people's SQL.
    created_at = models.DateTimeField(null=True, blank=True, db_index=True)
    provider = models.CharField(max_length=16)
    model = models.CharField(max_length=128, blank=True, default="")
    agent_id = models.CharField(max_length=128, blank=True, default="")
    duration_ms = models.FloatField(default=0.0)
    status = models.CharField(max_length=24, choices=Status.choices)
    error_class = models.CharField(max_length=64, blank=True, default="")
    # Additions for reports.
    session_id = models.CharField(max_length=128, blank=True, default="")
    endpoint = models.CharField(max_length=255, blank=True, default="")
    requested_model = models.CharField(max_length=128, blank=True, default="")
    sent_model = models.CharField(max_length=128, blank=True, default="")
    stream = models.BooleanField(default=False)
    upstream_status = models.IntegerField(null=True, blank=True)
    ttfb_ms = models.FloatField(null=True, blank=True)
    usage_source = models.CharField(
        max_length=16, choices=UsageSource.choices, default=UsageSource.NONE
    )
    # Time compression took on this request (all stages); NULL where it did not run.
    compress_ms = models.FloatField(null=True, blank=True)
    # Where the request finally went (host:port), and the upstreams that failed before it
    # ("api.openai.com: http_503; …"); empty when the first one answered.
    upstream = models.CharField(max_length=255, blank=True, default="")
    failover = models.CharField(max_length=512, blank=True, default="")
    # Copies of the figures in tp_usage / tp_costs, written in the same transaction and never
    # updated, so reports over a million rows are one index range scan instead of two joins.
    # Money as whole billionths of a dollar: SQL sums of integers are exact on every database.
    input_tokens = models.IntegerField(default=0)
    output_tokens = models.IntegerField(default=0)
    tokens_saved = models.IntegerField(default=0)
    cost_nano_usd = models.BigIntegerField(default=0)
    saved_nano_usd = models.BigIntegerField(default=0)
    # Bodies only with telemetry.store_prompts on; credentials never.
    request_body = models.TextField(null=True, blank=True)
    response_body = models.TextField(null=True, blank=True)

    class Meta:
        db_table = "tp_events"
        # Covering indexes: a period's totals (by model, by agent) never touch the table.
        indexes = [
            # Timings too: the engineering and compression views' histograms read them here.
            models.Index(fields=["ts", *TOTALS, *TIMINGS], name="tp_events_ts"),
            models.Index(fields=["model", "ts", *TOTALS], name="tp_events_model_ts"),
            models.Index(fields=["agent_id", "ts", *TOTALS], name="tp_events_agent_ts"),
            models.Index(fields=["provider", "ts", *TOTALS], name="tp_events_provider_ts"),
            models.Index(fields=["status", "ts", *TOTALS], name="tp_events_status_ts"),
            # Totals per day (in any zone) from quarter-hour groups, read in order: a month of
            # a busy ledger is grouped in a tenth of the time a sort takes.
            models.Index(QuarterHour("ts"), "ts", *TOTALS, name="tp_events_quarter"),
        ]

    def __str__(self) -> str:
        return f"{self.trace_id} {self.provider} {self.model} {self.status}"

class Usage(models.Model):
    trace = models.OneToOneField(
        Event, primary_key=True, db_column="trace_id", on_delete=models.CASCADE
    )
    # All input the provider processed, cached or not, so providers compare like for like.
    input_tokens = models.IntegerField(default=0)
    output_tokens = models.IntegerField(default=0)
    tokens_saved = models.IntegerField(default=0)
    savings_pct = models.FloatField(default=0.0)
    cache_hit = models.BooleanField(default=False)
    # Additions: the parts of input_tokens billed differently, and output detail.
    cache_read_tokens = models.IntegerField(default=0)
    cache_write_tokens = models.IntegerField(default=0)  # all cache writes (5 min + 1 h)
    cache_write_1h_tokens = models.IntegerField(default=0)  # the 1 h part of the above
    reasoning_tokens = models.IntegerField(default=0)  # included in output_tokens
    estimated = models.BooleanField(default=False)
    # tokens_saved was counted with tiktoken for a model that is not OpenAI's (Claude): close,
    # not exact. The provider's own counts (input_tokens, output_tokens) are unaffected.
    saved_estimated = models.BooleanField(default=False)

    class Meta:
        db_table = "tp_usage"

    @property
    def uncached_input_tokens(self) -> int:
        return self.input_tokens - self.cache_read_tokens - self.cache_write_tokens


class Cost(models.Model):
    trace = models.OneToOneField(
        Event, primary_key=True, db_column="trace_id", on_delete=models.CASCADE
    )
    cost_usd = models.DecimalField(**USD)
    cost_saved_usd = models.DecimalField(**USD)
    pricing_source = models.CharField(
        max_length=16, choices=PricingSource.choices, default=PricingSource.NONE
    )
    priced_as = models.CharField(max_length=128, blank=True, default="")

    class Meta:
        db_table = "tp_costs"


class Segment(models.Model):
    trace = models.ForeignKey(
        Event, db_column="trace_id", on_delete=models.CASCADE, related_name="segments"
    )
    segment_type = models.CharField(max_length=32)
    tokens_raw = models.IntegerField(default=0)
    tokens_after = models.IntegerField(default=0)

    class Meta:
        db_table = "tp_segments"


class RecipeHit(models.Model):
    """Which compression recipes fired on a request, and how many times."""

    trace = models.ForeignKey(
        Event, db_column="trace_id", on_delete=models.CASCADE, related_name="recipe_hits"
    )
    recipe = models.CharField(max_length=64)
    hits = models.IntegerField(default=0)

    class Meta:
        db_table = "tp_recipe_hits"
        indexes = [models.Index(fields=["recipe"], name="tp_recipe_hits_recipe")]


class DebugSwitch(models.Model):
    """`debug on --requests N`: how many of the next requests the ledger writer captures whole.

    One row (id 1). The writer takes from `remaining` in the transaction that writes the
    captures, so processes sharing a ledger never capture more than N between them.
    """

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    remaining = models.IntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "tp_debug"


class Capture(models.Model):
    """One request captured whole (`debug on`): enough to show it (`trace`) and send it again
    (`replay`). Credentials never: headers and query parameters that carry one are dropped."""

    trace = models.OneToOneField(
        Event, primary_key=True, db_column="trace_id", on_delete=models.CASCADE,
        related_name="capture",
    )
    method = models.CharField(max_length=8, default="POST")
    path = models.CharField(max_length=1024)  # TokenPak's path as the client called it, query too
    headers = models.JSONField(default=list)  # [[name, value], …] as forwarded upstream
    original_body = models.TextField()  # as the client sent it
    sent_body = models.TextField(null=True, blank=True)  # after compression; NULL: not sent
    profile = models.CharField(max_length=16, blank=True, default="")  # compression profile
    stages = models.JSONField(default=list)  # [[stage, milliseconds], …]
    recipes = models.JSONField(default=dict)  # recipe name → times it fired
    route_note = models.CharField(max_length=512, blank=True, default="")  # the budget's say
    response_text = models.TextField(blank=True, default="")  # the answer's text, or the error

    class Meta:
        db_table = "tp_captures"


class SignInFailure(models.Model):
    """A failed sign-in (a wrong token or password), kept for a few minutes: after too many
    from one address, the sign-in pages answer 429 until the oldest ages out."""

    address = models.CharField(max_length=64)
    at = models.FloatField()  # unix time

    class Meta:
        db_table = "tp_signin_failures"
        indexes = [models.Index(fields=["address", "at"], name="tp_signin_failures_addr_at")]


PRICE: DecimalArgs = {"max_digits": 14, "decimal_places": 6}


class ModelPrice(models.Model):
    """A price that wins over the shipped catalog (edited in the admin or by sync_pricing)."""

    model = models.CharField(max_length=128, unique=True)
    provider = models.CharField(max_length=32, blank=True, default="")
    input_per_mtok = models.DecimalField(**PRICE)
    output_per_mtok = models.DecimalField(**PRICE)
    cache_read_per_mtok = models.DecimalField(null=True, blank=True, **PRICE)
    cache_write_per_mtok = models.DecimalField(null=True, blank=True, **PRICE)
    cache_write_1h_per_mtok = models.DecimalField(null=True, blank=True, **PRICE)
    source = models.CharField(max_length=16, default="admin")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "tp_pricing"
        ordering = ["model"]

    def __str__(self) -> str:
        return f"{self.model}: ${self.input_per_mtok} / ${self.output_per_mtok} per MTok"
