"""The ledger writer: exactly one row per request, never on the response's time."""

from __future__ import annotations

import asyncio
import json
import signal

import httpx

from tests.conftest import wait_for

OPENAI = {"authorization": "Bearer sk-test-ledger-0000"}
ANTHROPIC = {"x-api-key": "sk-ant-test-ledger-0000", "anthropic-version": "2023-06-01"}


async def _burst(url: str, n: int) -> list[int]:
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(limits=limits, timeout=60) as c:

        async def one(i: int) -> int:
            stream = i % 2 == 1
            if i % 4 < 2:
                r = await c.post(url + "/v1/chat/completions", headers=OPENAI, json={
                    "model": "gpt-4o-mini", "messages": [], "stream": stream})
            else:
                r = await c.post(url + "/v1/messages", headers=ANTHROPIC, json={
                    "model": "claude-haiku-4-5", "max_tokens": 5, "messages": [],
                    "stream": stream})
            return r.status_code

        return await asyncio.gather(*(one(i) for i in range(n)))


def test_it_leaves_exactly_1000_rows_for_1000_concurrent_mixed_requests(server, fake, rows):
    log = server.home / "tokenpak.log"
    before = log.read_text() if log.exists() else ""
    statuses = asyncio.run(_burst(server.url, 1000))
    assert statuses == [200] * 1000
    events = rows(1000, timeout=120)
    assert len(events) == 1000
    assert len({e.trace_id for e in events}) == 1000
    assert all(e.status == "ok" and e.usage.output_tokens == 7 for e in events)
    assert sum(e.stream for e in events) == 500
    assert {e.provider for e in events} == {"openai", "anthropic"}
    written = log.read_text()[len(before):]
    assert events[-1].trace_id in written  # the request lines are there, and nothing bad
    assert "locked" not in written and "ERROR" not in written


def test_it_writes_queued_rows_on_a_clean_stop(start_server, fake, rows):
    from telemetry.models import Event

    # A batch window far longer than the test: rows are still queued when SIGTERM arrives.
    server = start_server(TOKENPAK_FLUSH_SECONDS="60")
    for _ in range(20):
        r = httpx.post(server.url + "/v1/chat/completions", headers=OPENAI,
                       json={"model": "gpt-4o-mini", "messages": []})
        assert r.status_code == 200
    assert Event.objects.count() == 0
    server.stop(signal.SIGTERM)
    assert len(rows(20)) == 20


def test_it_writes_queued_rows_on_ctrl_c(start_server, fake, rows):
    server = start_server(TOKENPAK_FLUSH_SECONDS="60")
    for _ in range(5):
        httpx.post(server.url + "/v1/messages", headers=ANTHROPIC,
                   json={"model": "claude-haiku-4-5", "max_tokens": 5, "messages": []})
    server.stop(signal.SIGINT)
    assert len(rows(5)) == 5


def test_it_does_not_make_the_response_wait_for_the_database(start_server, fake, rows):
    from telemetry.models import Event

    server = start_server(TOKENPAK_FLUSH_SECONDS="60")
    r = httpx.post(server.url + "/v1/chat/completions", headers=OPENAI,
                   json={"model": "gpt-4o-mini", "messages": []})
    assert r.json()["usage"]["prompt_tokens"] == 21
    # The answer is complete while its row is still queued.
    assert Event.objects.filter(trace_id=r.headers["x-tokenpak-trace-id"]).count() == 0
    server.stop()
    wait_for(lambda: Event.objects.count() == 1)


def test_it_stores_no_bodies_unless_asked(server, fake, rows):
    httpx.post(server.url + "/v1/chat/completions", headers=OPENAI,
               json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "secret"}]})
    [event] = rows(1)
    assert event.request_body is None and event.response_body is None


def test_it_stores_bodies_but_never_keys_with_store_prompts_on(start_server, fake, rows):
    server = start_server(TOKENPAK_STORE_PROMPTS="1")
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "remember me"}],
            "stream": True}
    httpx.post(server.url + "/v1/chat/completions", headers=OPENAI, json=body)
    [event] = rows(1)
    assert json.loads(event.request_body) == body  # as the client sent it
    assert "Hello" in event.response_body and "data: [DONE]" in event.response_body
    assert "sk-test-ledger" not in event.request_body + event.response_body
