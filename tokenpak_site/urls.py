from django.contrib import admin
from django.contrib.staticfiles.views import serve
from django.urls import include, path, re_path
from django.views.generic import RedirectView

from tokenpak_site.api import api

urlpatterns = [
    path("admin/", admin.site.urls),
    path("dashboard", RedirectView.as_view(url="/dashboard/")),
    path("dashboard/", include("telemetry.urls")),
    # The admin's and the dashboard's CSS and script, straight from the installed apps: a
    # local tool has no web server in front and no collectstatic step.
    re_path(r"^static/(?P<path>.*)$", serve, {"insecure": True}),
    path("", api.urls),
]
