"""The telemetry REST API: GET /v1/telemetry/…, for a signed-in staff user or the local API
token (`Authorization: Bearer $(tokenpak token)`). Figures come from telemetry.reports, as the
`cost` command's do, so they agree to the cent.

proxy/handler.py leaves /v1/telemetry/ to Django (sessions and auth middleware); this router is
added before the proxy's so its GET routes are matched before the proxy's catch-alls.
"""

from __future__ import annotations

from django.http import HttpRequest
from ninja import Router
from ninja.security import HttpBearer, SessionAuthIsStaff

from telemetry import access


class LocalToken(HttpBearer):
    def authenticate(self, request: HttpRequest, token: str) -> str | None:
        return "token" if access.token_matches(token) else None


router = Router(tags=["telemetry"], auth=[LocalToken(), SessionAuthIsStaff()])
