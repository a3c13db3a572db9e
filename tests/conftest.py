from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import pytest
from django.conf import settings

from tests.fakeprovider import FakeProvider
from tests.live import LiveServer, database_env

if TYPE_CHECKING:
    import httpx

# Two tiers. `live`: the test starts a server or a process (the proxy under uvicorn, the fake
# provider, manage.py, a browser); `make test-fast` runs the rest, in this process, in seconds.
# Using one of these fixtures (at any depth) marks a test live; a test that starts a process or
# a server itself says so with @pytest.mark.live (or `pytestmark` for a whole module).
LIVE_FIXTURES = frozenset({"fake_provider", "fake", "server", "start_server", "chrome"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if LIVE_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.live)


# The guard that keeps the fast tier honest: a test not marked live that starts a process or
# listens on a socket fails and says what to mark. Not while a module is being imported: a
# library may run a helper once on import (trio runs ldconfig), whichever test imports it first.
_running_in_process: str | None = None


def _refuse(what: str) -> None:
    if _running_in_process is None:
        return
    frame: FrameType | None = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return
        frame = frame.f_back
    raise AssertionError(f"{_running_in_process} {what}: mark it @pytest.mark.live")


def pytest_configure(config: pytest.Config) -> None:
    popen_init = subprocess.Popen.__init__
    listen = socket.socket.listen

    def guarded_popen_init(self: subprocess.Popen, *args: Any, **kwargs: Any) -> None:
        _refuse("starts a process")
        popen_init(self, *args, **kwargs)

    def guarded_listen(self: Any, *args: Any) -> None:
        _refuse("listens on a socket")
        listen(self, *args)

    # (The ignores: mypy refuses assigning to a method, which is the point here.)
    subprocess.Popen.__init__ = guarded_popen_init  # type: ignore[method-assign]
    socket.socket.listen = guarded_listen  # type: ignore[method-assign]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, object, object]:
    global _running_in_process
    _running_in_process = None if item.get_closest_marker("live") else item.nodeid
    try:
        return (yield)
    finally:
        _running_in_process = None


@pytest.fixture(scope="session")
def fake_provider() -> Iterator[FakeProvider]:
    with FakeProvider() as fake:
        yield fake


@pytest.fixture
def fake(fake_provider: FakeProvider) -> FakeProvider:
    fake_provider.reset()
    return fake_provider


def _server_env(fake: FakeProvider, **extra: str) -> dict[str, str]:
    return {
        "TOKENPAK_OPENAI_BASE_URL": fake.url,
        "TOKENPAK_ANTHROPIC_BASE_URL": fake.url,
        # Tests age rows on purpose; only the retention tests turn the daily prune on.
        "TOKENPAK_RETENTION_DAYS": "0",
        **database_env(),
        **extra,
    }


@pytest.fixture(scope="session")
def _session_server(
    django_db_setup: None, django_db_blocker, fake_provider: FakeProvider
) -> Iterator[LiveServer]:
    with django_db_blocker.unblock():
        env = _server_env(fake_provider)
    server = LiveServer(env, Path(settings.TOKENPAK_HOME) / "server").start()
    yield server
    server.stop()


@pytest.fixture
def server(_session_server: LiveServer, transactional_db: None, fake: FakeProvider) -> LiveServer:
    """The shared server, with an empty ledger and an empty provider log for each test."""
    return _session_server


@pytest.fixture
def token(server: LiveServer) -> str:
    """The shared server's local API token, made by the `token` command in its TOKENPAK_HOME."""
    import io

    from django.core.management import call_command
    from django.test import override_settings

    out = io.StringIO()
    with override_settings(TOKENPAK_HOME=server.home):
        call_command("token", stdout=out)
    return out.getvalue().strip()


@pytest.fixture
def start_server(
    transactional_db: None, fake: FakeProvider, tmp_path: Path
) -> Iterator[Callable[..., LiveServer]]:
    """A server of its own with extra settings (environment names as keyword arguments)."""
    started: list[LiveServer] = []

    def start(home: Path | None = None, **extra: str) -> LiveServer:
        server = LiveServer(_server_env(fake, **extra), home or tmp_path / "home").start()
        started.append(server)
        return server

    yield start
    for s in started:
        s.stop()


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout:.0f} s")
        time.sleep(0.02)


@pytest.fixture
def rows() -> Callable[..., list]:
    """Wait until the ledger holds n events, then return them with usage and cost."""
    from telemetry.models import Event

    def get(n: int, timeout: float = 10.0) -> list[Event]:
        wait_for(lambda: Event.objects.count() >= n, timeout)
        # A moment more, so a stray extra row would show up in the count.
        time.sleep(0.1)
        return list(Event.objects.select_related("usage", "cost").order_by("ts"))

    return get


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a socket fails: proves code works offline."""

    def guard(*args: object, **kwargs: object) -> None:
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", guard)
    monkeypatch.setattr(socket, "create_connection", guard)
    monkeypatch.setattr(socket, "getaddrinfo", guard)


# A known mix of real proxy traffic for report tests: (provider, model, agent, stream, usage).
TRAFFIC: list[tuple[str, str, str, bool, dict[str, Any]]] = [
    ("openai", "gpt-4o-mini", "coder", False, {"prompt_tokens": 1000, "completion_tokens": 200}),
    ("openai", "gpt-4o-mini", "coder", True, {"prompt_tokens": 3000, "completion_tokens": 500,
                                              "prompt_tokens_details": {"cached_tokens": 2000}}),
    ("openai", "gpt-4o", "reviewer", False, {"prompt_tokens": 500, "completion_tokens": 100}),
    ("anthropic", "claude-sonnet-4-6", "coder", True,
     {"input_tokens": 100, "cache_read_input_tokens": 9000, "output_tokens": 800}),
    ("anthropic", "claude-haiku-4-5", "", False, {"input_tokens": 2000, "output_tokens": 50}),
    ("anthropic", "mystery-model-x", "reviewer", False, {"input_tokens": 1000,
                                                         "output_tokens": 1000}),
]


def send(url: str, provider: str, model: str, agent: str = "", stream: bool = False,
         usage: dict | None = None, scenario: str = "", *, session: str = "",
         client: httpx.Client | None = None) -> int:
    """One request through the proxy; `client` keeps a connection for many (a new client per
    request costs some 40 ms on this machine)."""
    import json

    import httpx

    post = client.post if client is not None else httpx.post
    headers = {"x-fake-usage": json.dumps(usage or {})}
    if agent:
        headers["x-tokenpak-agent"] = agent
    if session:
        headers["x-tokenpak-session"] = session
    if scenario:
        headers["x-fake-scenario"] = scenario
    if provider == "openai":
        headers["authorization"] = "Bearer sk-test-traffic-0000"
        r = post(url + "/v1/chat/completions", headers=headers,
                       json={"model": model, "messages": [], "stream": stream})
    else:
        headers |= {"x-api-key": "sk-ant-test-traffic-0000", "anthropic-version": "2023-06-01"}
        r = post(url + "/v1/messages", headers=headers,
                       json={"model": model, "max_tokens": 10, "messages": [], "stream": stream})
    return r.status_code


@pytest.fixture
def traffic(server, rows) -> list:
    """TRAFFIC plus one provider error, sent through the live proxy; returns the events."""
    for provider, model, agent, stream, usage in TRAFFIC:
        send(server.url, provider, model, agent, stream, usage)
    send(server.url, "openai", "gpt-4o", "coder", scenario="status=429")
    return rows(len(TRAFFIC) + 1)
