"""Agents that name themselves: who sent a request that did not say so with X-TokenPak-Agent and
X-TokenPak-Session. A coding agent known by its User-Agent gets its name as `agent_id` and its own
session header as `session_id`; TokenPak's headers always win. A new client is one entry in
CLIENTS. Their headers are still forwarded: they are the client's, not TokenPak's.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Client:
    agent: str  # what tp_events.agent_id says
    user_agents: tuple[str, ...]  # User-Agent prefixes, lower case
    session_header: str  # lower case


CLIENTS = (
    # claude-cli/2.1.3 (external, cli); the session id on every request of a conversation
    Client("claude-code", ("claude-cli/",), "x-claude-code-session-id"),
    # codex_exec/0.171.0 (Debian 12.0.0; x86_64) …, codex_cli_rs/…, codex_vscode/…
    Client("codex", ("codex_",), "session-id"),
)
SESSION_HEADERS = frozenset(c.session_header for c in CLIENTS)


def identify(user_agent: str) -> Client | None:
    ua = user_agent.lower()
    return next((c for c in CLIENTS if ua.startswith(c.user_agents)), None)
