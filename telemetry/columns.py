"""What a ledger column can hold, read from its model field, and every value made to fit it.

Values reach the ledger from clients (model, agent, session), from providers (their model, error
type, token counts) and from spool files, written by this version or an older one. A value the
database refuses would fail its whole batch: PostgreSQL refuses NUL in text, a varchar longer
than its column and an integer out of its column's range; neither driver can encode a lone
surrogate; SQLite cannot bind an integer past 64 bits. So every row goes through `Columns.fit`
before the writer inserts it:

- text: made storable (tokenpak_site.text.storable) and cut to the column's max_length;
- integers: clamped to the column's range, the same on every database (PostgreSQL's), so a
  ledger copied from SQLite to PostgreSQL still fits; a count that is no number becomes 0;
- floats and decimals: a value that is not finite becomes the column's default, a decimal past
  its digits is clamped;
- a missing value in a column that takes no NULL: the column's default.

Plain values (short ASCII text, counts in range) take one type check and one comparison each.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, cast

from django.db import models
from django.db.backends.base.operations import BaseDatabaseOperations

from tokenpak_site.text import storable

if TYPE_CHECKING:
    from django.db.models.fields.related import RelatedField

_TEXT, _INT, _FLOAT, _DECIMAL, _BOOL = range(5)
_NOT_PLAIN = re.compile("[^\x20-\x7e]")


class Columns:
    """One table's columns as `fit` sees them: (attname, kind, limits, fallback) each."""

    def __init__(self, fields: list[models.Field]) -> None:
        self.rules: list[tuple[str, int, Any, Any]] = []
        self.texts = [f.attname for f in fields
                      if isinstance(_target(f), (models.CharField, models.TextField))]
        for f in fields:
            rule = _rule(f)
            if rule is not None:
                self.rules.append(rule)

    def limits(self, name: str) -> tuple[int, int]:
        """The range of an integer column."""
        return next(limit for n, kind, limit, _ in self.rules if n == name and kind == _INT)

    def fit(self, row: dict[str, Any]) -> None:
        """Make every value of `row` one its column takes, in place: whoever reads the row
        afterwards (budget settlement, the log line) sees what the database holds."""
        for name, kind, limit, fallback in self.rules:
            value = row.get(name)
            if value is None:
                if fallback is not None:  # missing, or None, in a column that takes no NULL
                    row[name] = fallback
                continue
            if kind == _TEXT:
                if (type(value) is str and (limit is None or len(value) <= limit)
                        and value.isascii() and "\x00" not in value):
                    continue
                row[name] = _text(value, limit)
            elif kind == _INT:
                if type(value) is int and limit[0] <= value <= limit[1]:
                    continue
                row[name] = _integer(value, limit, fallback)
            elif kind == _FLOAT:
                if type(value) is float and math.isfinite(value):
                    continue
                row[name] = _float(value, fallback)
            elif kind == _DECIMAL:
                if type(value) is Decimal and value.is_finite() and abs(value) <= limit:
                    continue
                row[name] = _decimal(value, limit, fallback)
            elif type(value) is not bool:
                row[name] = bool(value)

    def plain(self, row: dict[str, Any]) -> dict[str, Any]:
        """A copy of `row` with its text reduced to printable ASCII ('?' for anything else):
        for a database that refuses even storable text (a LATIN1 or SQL_ASCII PostgreSQL
        database refuses what its encoding lacks)."""
        out = dict(row)
        for name in self.texts:
            value = out.get(name)
            if type(value) is str:
                out[name] = _NOT_PLAIN.sub("?", value)
        return out


def _target(f: models.Field) -> models.Field:
    # A foreign key's column holds what the field it points at holds (trace_id).
    return cast("RelatedField[Any, Any]", f).target_field if f.is_relation else f


def _rule(f: models.Field) -> tuple[str, int, Any, Any] | None:
    target = _target(f)
    default = f.get_default()
    if isinstance(target, (models.CharField, models.TextField)):
        return f.attname, _TEXT, target.max_length, None if f.null else (default or "")
    if isinstance(target, models.BooleanField):
        return f.attname, _BOOL, None, None if f.null else bool(default)
    if isinstance(target, models.IntegerField):  # every integer field, big and small
        limits = BaseDatabaseOperations.integer_field_ranges[target.get_internal_type()]
        return f.attname, _INT, limits, None if f.null else (default or 0)
    if isinstance(target, models.FloatField):
        return f.attname, _FLOAT, None, None if f.null else (default or 0.0)
    if isinstance(target, models.DecimalField):
        places = target.decimal_places
        # Whole: SQLite keeps decimals as REAL, and 99999999999.999999999 reads back as 1e11,
        # one digit too many for the field.
        largest = Decimal(10) ** (target.max_digits - places) - 1
        return f.attname, _DECIMAL, largest, None if f.null else (default or Decimal(0))
    return None  # datetimes: made by the writer from ts, never taken from outside


def _text(value: Any, limit: int | None) -> str:
    text = value if isinstance(value, str) else str(value)
    text = storable(text)
    return text if limit is None else text[:limit]


def _integer(value: Any, limits: tuple[int, int], fallback: Any) -> Any:
    try:
        number = int(value)  # a bool, a float, a numeric string from a spool line
    except (TypeError, ValueError, OverflowError):  # None, "x", inf, nan
        return fallback
    return min(max(number, limits[0]), limits[1])


def _float(value: Any, fallback: Any) -> Any:
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return fallback
    return number if math.isfinite(number) else fallback


def _decimal(value: Any, largest: Decimal, fallback: Any) -> Any:
    try:
        number = Decimal(value) if not isinstance(value, float) else Decimal(repr(value))
    except (TypeError, ValueError, InvalidOperation):
        return fallback
    if not number.is_finite():
        return fallback
    return min(max(number, -largest), largest)
