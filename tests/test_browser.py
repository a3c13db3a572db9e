"""The dashboard in a real browser: Debian's Chromium, headless, driven by its chromium-driver.

Signs in as a person would, opens every view, checks the charts are drawn, changes a filter and
sees the figures change to what `cost` says, watches the overview update by itself, and reads a
page with JavaScript off. Screenshots go to artifacts/screenshots/ (or $TOKENPAK_ARTIFACTS).
Without Chromium the tests skip, saying so; under CI=true they fail instead.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from django.core.management import call_command

from telemetry import reports
from tests.conftest import send, wait_for
from tests.live import ROOT

if TYPE_CHECKING:
    from selenium import webdriver  # imported where used: without Chromium the tests skip

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
ARTIFACTS = Path(os.environ.get("TOKENPAK_ARTIFACTS", ROOT / "artifacts")) / "screenshots"


def _browser(javascript: bool = True) -> webdriver.Chrome:
    if not (CHROMIUM and DRIVER):
        missing = "no Chromium (apt-get install chromium chromium-driver)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{missing}: CI requires the browser tests")
        pytest.skip(f"browser tests skipped: {missing}")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1800"):
        options.add_argument(arg)
    if not javascript:
        options.add_argument("--blink-settings=scriptEnabled=false")
    driver = webdriver.Chrome(options=options, service=Service(executable_path=DRIVER))
    driver.set_page_load_timeout(30)
    return driver


@pytest.fixture
def chrome() -> Iterator:
    driver = _browser()
    yield driver
    driver.quit()


def shot(driver, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    height = driver.execute_script("return document.body.scrollHeight") or 1800
    driver.set_window_size(1280, min(max(height, 900), 6000))
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def card_text(driver, label: str) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, f'.card[data-card="{label}"] .value').text


def cost(*flags: str) -> dict:
    out = io.StringIO()
    call_command("cost", *flags, "--json", stdout=out)
    return json.loads(out.getvalue())["totals"]


def sign_in(driver, server, token: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(server.url + "/dashboard/finops")
    assert "/dashboard/login" in driver.current_url  # not signed in yet
    driver.find_element(By.NAME, "token").send_keys(token)
    driver.find_element(By.CSS_SELECTOR, "form.signin button").click()
    wait_for(lambda: driver.current_url.endswith("/dashboard/finops"))


def test_it_signs_in_opens_every_view_and_draws_its_charts(chrome, server, token, traffic):
    from selenium.webdriver.common.by import By

    sign_in(chrome, server, token)
    expected = {
        "overview": {"budgets"} - {"budgets"},  # no budget set: no gauge
        "finops": {"cost_per_day", "by_model", "by_agent", "savings_per_day"},
        "engineering": {"latency", "errors_per_day", "errors_by_class"},
        "sessions": set(),
        "compression": set(),  # the traffic was not compressible: empty states
    }
    for view, charts in expected.items():
        chrome.get(f"{server.url}/dashboard/{'' if view == 'overview' else view}")
        assert chrome.find_element(By.CSS_SELECTOR, "h1").text.startswith(
            {"finops": "FinOps"}.get(view, view.capitalize()))
        drawn = {}
        for svg in chrome.find_elements(By.CSS_SELECTOR, "svg.chart"):
            # Laid out by the browser, with marks of real size.
            box = svg.rect
            marks = svg.find_elements(By.CSS_SELECTOR, "rect, polyline, circle")
            assert box["width"] > 300 and box["height"] > 30
            assert marks and any(m.rect["height"] > 0 or m.rect["width"] > 0 for m in marks)
            drawn[svg.get_attribute("data-chart")] = len(marks)
        assert set(drawn) == charts, view
        shot(chrome, view)
    chrome.get(f"{server.url}/dashboard/sessions")
    rows = chrome.find_elements(By.CSS_SELECTOR, "#requests tbody tr")
    assert len(rows) == len(traffic)
    rows[0].find_element(By.CSS_SELECTOR, "a").click()
    assert chrome.find_element(By.CSS_SELECTOR, "h1").text.startswith("Trace ")
    shot(chrome, "trace")


def test_it_changes_the_figures_when_a_filter_changes(chrome, server, token, traffic):
    from selenium.webdriver.common.by import By

    sign_in(chrome, server, token)
    today = reports.period("today")[0].date().isoformat()
    # What the page shows is what `cost` prints, before and after the filter.
    everything = cost("--since", "2000-01-01")
    assert card_text(chrome, "Spend") == reports.money(Decimal(everything["cost_usd"]))
    field = chrome.find_element(By.NAME, "model")
    field.send_keys("gpt-4o-mini")
    chrome.find_element(By.CSS_SELECTOR, "form.filters button").click()
    wait_for(lambda: "model=gpt-4o-mini" in chrome.current_url)
    narrowed = cost("--since", "2000-01-01", "--model", "gpt-4o-mini")
    assert narrowed["cost_usd"] != everything["cost_usd"]
    assert card_text(chrome, "Spend") == reports.money(Decimal(narrowed["cost_usd"]))
    bars = chrome.find_elements(By.CSS_SELECTOR, 'svg[data-chart="by_model"] rect')
    assert len(bars) == 1  # one model left in the chart
    assert chrome.find_element(By.NAME, "model").get_attribute("value") == "gpt-4o-mini"
    shot(chrome, "finops-filtered")
    # A date filter, typed into the date input as a person would.
    chrome.get(f"{server.url}/dashboard/finops")
    chrome.execute_script(
        "document.querySelector('input[name=since]').value = arguments[0];"
        "document.querySelector('input[name=until]').value = arguments[0];", today)
    chrome.find_element(By.CSS_SELECTOR, "form.filters button").click()
    wait_for(lambda: f"since={today}" in chrome.current_url)
    assert card_text(chrome, "Spend") == reports.money(Decimal(cost("--today")["cost_usd"]))


def test_it_updates_the_overview_while_it_is_open(chrome, server, token, rows):
    from selenium.webdriver.common.by import By

    sign_in(chrome, server, token)
    chrome.get(server.url + "/dashboard/")
    assert card_text(chrome, "Today") == "$0.00"
    send(server.url, "openai", "gpt-4o", usage={"prompt_tokens": 1000, "completion_tokens": 100})
    [event] = rows(1)
    # No reload: the page fetches its live part itself.
    deadline = time.monotonic() + 10
    while event.trace_id not in chrome.find_element(By.ID, "live-recent").text:
        assert time.monotonic() < deadline, "the overview did not update by itself"
        time.sleep(0.2)
    assert card_text(chrome, "Today") == reports.money(Decimal(cost("--today")["cost_usd"]))
    assert chrome.find_element(By.TAG_NAME, "body").get_attribute("data-updated")
    shot(chrome, "overview-live")


def test_it_is_readable_with_javascript_off(server, token, traffic):
    from selenium.webdriver.common.by import By

    driver = _browser(javascript=False)
    try:
        driver.get(f"{server.url}/dashboard/login/?token={token}&next=/dashboard/")
        # Scripts really are off: the overview's refresh never runs (with them on it marks
        # the page within 2 s, see the test above).
        time.sleep(3)
        assert driver.find_element(By.TAG_NAME, "body").get_attribute("data-updated") is None
        assert driver.find_element(By.CSS_SELECTOR, "#recent table").text
        driver.get(f"{server.url}/dashboard/finops")
        table = driver.find_element(By.CSS_SELECTOR, "#by_model table")
        assert "gpt-4o-mini" in table.text
        assert driver.find_elements(By.CSS_SELECTOR, 'svg[data-chart="cost_per_day"] rect')
        shot(driver, "finops-no-javascript")
    finally:
        driver.quit()
