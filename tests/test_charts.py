"""SVG charts drawn on the server."""

from __future__ import annotations

import re
from decimal import Decimal

from telemetry import charts
from telemetry.dashboard import Chart, Column, Section


def section(rows, kind="bars", ys=("cost_usd",), unit="usd", x="day") -> Section:
    return Section("s", "S", [Column(x, x), *(Column(y, y.upper()) for y in ys)], rows,
                   Chart(kind, x, tuple(ys), unit))


def test_it_draws_a_bar_per_row_with_the_exact_figure_in_its_title():
    rows = [{"day": "2026-11-01", "cost_usd": Decimal("1.5")},
            {"day": "2026-11-02", "cost_usd": Decimal("0.000123")}]
    svg = str(charts.render(section(rows)))
    assert svg.startswith('<svg class="chart" data-chart="s"')
    assert svg.count("<rect") == 2
    assert "<title>2026-11-01: $1.50</title>" in svg
    assert "<title>2026-11-02: $0.000123</title>" in svg
    assert ">11-01<" in svg  # dates shown as MM-DD


def test_it_escapes_names_that_came_from_clients():
    rows = [{"model": '<script>alert("x")</script>', "cost_usd": Decimal(1)}]
    svg = str(charts.render(section(rows, "hbars", x="model")))
    assert "<script" not in svg
    assert "&lt;script&gt;" in svg


def test_it_draws_nothing_for_an_empty_section():
    assert str(charts.render(section([]))) == ""


def test_it_draws_lines_and_names_each_series():
    rows = [{"day": f"2026-11-0{i}", "a": i, "b": 2 * i} for i in range(1, 4)]
    svg = str(charts.render(section(rows, "lines", ys=("a", "b"), unit="int")))
    assert svg.count("<polyline") == 2
    assert svg.count("<circle") == 6
    assert ">A</text>" in svg and ">B</text>" in svg  # the legend


def test_it_marks_the_alert_threshold_on_a_budget_gauge():
    rows = [{"budget": "Monthly", "used_pct": 130.0, "alert_at_pct": 80, "state": "exceeded",
             "spent_usd": Decimal("13"), "limit_usd": Decimal("10")}]
    svg = str(charts.render(section(rows, "gauges", ys=("used_pct",), unit="pct", x="budget")))
    assert 'class="alert"' in svg
    assert "$13.00 of $10.00 (130%)" in svg
    # the bar stops at the end of its track
    widths = [float(w) for w in re.findall(r'<rect x="260" y="\d+" width="([\d.]+)"', svg)]
    assert widths[0] == widths[1]


def test_it_writes_figures_as_the_cost_command_does():
    assert charts.display(Decimal("1234.5"), "usd") == "$1,234.50"
    assert charts.display(Decimal("0.0421"), "usd") == "$0.042"
    assert charts.display(12345, "int") == "12,345"
    assert charts.display([4.5, 120.0, 15000.0], "ms") == "4.5 ms / 120 ms / 15.00 s"
    assert charts.display([4.5, 120.0], "ms") == "4.5 / 120 ms"
    assert charts.display(None, "ms") == "–"
