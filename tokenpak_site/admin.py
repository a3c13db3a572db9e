"""The admin site, with its sign-in page under the same guard as the dashboard's."""

from __future__ import annotations

from typing import Any

from django.contrib.admin import AdminSite
from django.http import HttpRequest, HttpResponse

from telemetry import access


class Site(AdminSite):
    def login(self, request: HttpRequest, extra_context: dict[str, Any] | None = None
              ) -> HttpResponse:
        if request.method != "POST":  # showing the form is not an attempt
            return super().login(request, extra_context)
        if wait := access.sign_in_wait(request):
            return HttpResponse(access.too_many(wait), status=429, content_type="text/plain")
        response = super().login(request, extra_context)
        # A redirect is a signed-in user; the form again is a wrong name or password.
        access.note_sign_in(request, ok=response.status_code == 302)
        return response
