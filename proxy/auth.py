"""server.require_token: every proxy request carries the local token in X-TokenPak-Token.

The token is the one `tokenpak token` prints (telemetry/access.py), read at each request with
one stat, so `token --rotate` counts from the next request without a restart. It is never made
here: until someone runs `tokenpak token`, every request is refused and told to.

A refused request leaves no ledger row: it is not the user's traffic, and anyone who can reach
the port could otherwise fill the ledger. The log says so at most once a minute per process, with
how many were refused since, and never holds the token or anything the client sent but its path.
"""

from __future__ import annotations

import logging
import threading
import time

from django.http import HttpRequest

from telemetry import access

log = logging.getLogger("tokenpak.requests")

HEADER = "X-TokenPak-Token"
LOG_EVERY = 60.0  # seconds between two warning lines about refused requests

HOW = (f"send TokenPak's local token as the {HEADER} header (`tokenpak token` on the server "
       "prints it; the OpenAI and Anthropic SDKs take it in default_headers)")
MISSING = f"TokenPak requires its local token on every request: {HOW}."
WRONG = (f"The {HEADER} header is not TokenPak's local token (it may have been rotated): "
         f"{HOW}.")
NONE_YET = (f"TokenPak requires its local token on every request, and none has been made yet: "
            f"run `tokenpak token` (or `python manage.py token`) on the server, then {HOW}.")


def refusal(request: HttpRequest) -> str:
    """The message for a request without the right token; "" lets it through."""
    given = request.headers.get(HEADER, "")
    if access.token_matches(given):
        return ""
    if not access.current_token():
        why, message = "no token has been made yet (run `tokenpak token`)", NONE_YET
    elif not given:
        why, message = f"no {HEADER} header", MISSING
    else:
        why, message = f"a wrong {HEADER}", WRONG
    _note(request, why)
    return message


class _Throttle:
    """Says when the next line may be written, and how many were held back until then."""

    def __init__(self, every: float, clock=time.monotonic) -> None:
        self.every, self.clock = every, clock
        self.lock = threading.Lock()
        self.next_at = 0.0
        self.held = 0

    def due(self) -> int | None:
        """None: hold this one back. Otherwise how many were held back since the last line."""
        with self.lock:
            now = self.clock()
            if now < self.next_at:
                self.held += 1
                return None
            held, self.held, self.next_at = self.held, 0, now + self.every
            return held


_throttle = _Throttle(LOG_EVERY)


def _note(request: HttpRequest, why: str) -> None:
    held = _throttle.due()
    if held is None:
        return
    client = str(request.META.get("REMOTE_ADDR") or "?")[:64]
    since = f"; {held} more refused since the last line" if held else ""
    log.warning("refused %s %s from %s: %s (server.require_token)%s", request.method,
                request.path[:200], client, why, since)
