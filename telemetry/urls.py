from django.urls import path, re_path

from telemetry import views

# With or without the trailing slash: APPEND_SLASH is off (it must never redirect an SDK's
# POST), and people type these addresses.
urlpatterns = [
    path("", views.page, {"name": "overview"}, name="dashboard"),
    re_path(r"^finops/?$", views.page, {"name": "finops"}, name="dashboard-finops"),
    re_path(r"^engineering/?$", views.page, {"name": "engineering"},
            name="dashboard-engineering"),
    re_path(r"^sessions/?$", views.sessions, name="dashboard-sessions"),
    path("sessions/<str:trace_id>/", views.trace, name="dashboard-trace"),
    re_path(r"^compression/?$", views.page, {"name": "compression"},
            name="dashboard-compression"),
    re_path(r"^login/?$", views.sign_in, name="dashboard-login"),
    re_path(r"^logout/?$", views.sign_out, name="dashboard-logout"),
]
