"""Coding agents that name themselves (proxy/clients.py): their rows say who and which session,
through the front door, with the agents' own headers as they send them."""

from __future__ import annotations

import httpx
import pytest

CLAUDE_CODE = {"user-agent": "claude-cli/2.1.3 (external, cli)",
               "x-claude-code-session-id": "5b2e6f0a-claude-session",
               "x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01"}
# As Codex 0.171 sends them (../shared/corpus-codex/*.headers.jsonl).
CODEX = {"user-agent": "codex_exec/0.171.0 (Debian 12.0.0; x86_64) xterm-256color",
         "originator": "codex_exec", "session-id": "01a23427-e371-7340-a7ee-fd88c917f315",
         "authorization": "Bearer sk-test"}
MESSAGE = ("/v1/messages", {"model": "claude-haiku-4-5", "max_tokens": 10, "messages": []})
RESPONSE = ("/v1/responses", {"model": "gpt-5.5", "input": "hi"})


@pytest.mark.parametrize("headers, call, agent, session", [
    (CLAUDE_CODE, MESSAGE, "claude-code", "5b2e6f0a-claude-session"),
    (CODEX, RESPONSE, "codex", "01a23427-e371-7340-a7ee-fd88c917f315"),
], ids=["claude-code", "codex"])
def test_it_records_which_agent_and_session_sent_a_request(server, fake, rows, headers, call,
                                                             agent, session):
    path, body = call
    assert httpx.post(server.url + path, json=body, headers=headers).status_code == 200
    [event] = rows(1)
    assert (event.agent_id, event.session_id) == (agent, session)
    # The agent's headers are its own: the provider still gets them.
    assert fake.log[0].headers["user-agent"] == headers["user-agent"]
    session_header = "x-claude-code-session-id" if agent == "claude-code" else "session-id"
    assert fake.log[0].headers[session_header] == session


def test_it_lets_tokenpaks_own_headers_win_over_what_an_agent_says(server, fake, rows):
    path, body = MESSAGE
    httpx.post(server.url + path, json=body, headers={
        **CLAUDE_CODE, "x-tokenpak-agent": "reviewer", "x-tokenpak-session": "run-7"})
    httpx.post(server.url + path, json=body, headers={**CLAUDE_CODE, "x-tokenpak-agent": "bot"})
    first, second = rows(2)
    assert (first.agent_id, first.session_id) == ("reviewer", "run-7")
    assert (second.agent_id, second.session_id) == ("bot", "5b2e6f0a-claude-session")


def test_it_takes_no_session_header_from_a_client_it_does_not_know(server, fake, rows):
    path, body = RESPONSE
    httpx.post(server.url + path, json=body, headers={
        "authorization": "Bearer sk-test", "user-agent": "my-script/1.0",
        "session-id": "not-an-agent", "x-claude-code-session-id": "nor-this"})
    [event] = rows(1)
    assert (event.agent_id, event.session_id) == ("", "")


def test_it_stores_an_agents_oversized_session_header_cut_to_its_column(server, fake, rows):
    path, body = MESSAGE
    huge = ("é" + "s" * 20_000).encode()  # UTF-8 bytes: TokenPak reads header bytes as latin-1
    response = httpx.post(server.url + path, json=body,
                          headers={**CLAUDE_CODE, "x-claude-code-session-id": huge})
    assert response.status_code == 200
    [event] = rows(1)
    assert event.agent_id == "claude-code"
    assert len(event.session_id) == 128 and event.session_id.endswith("sss")
    # Forwarded as the bytes it came as (the fake reads header bytes as latin-1 too).
    assert fake.log[0].headers["x-claude-code-session-id"] == huge.decode("latin-1")
