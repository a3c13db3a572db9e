import logging

from django.apps import AppConfig


class TelemetryConfig(AppConfig):
    name = "telemetry"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.conf import settings

        from telemetry import signals  # noqa: F401 - connects the price-cache receivers

        if not settings.TELEMETRY_ENABLED:
            logging.getLogger("tokenpak").warning(
                "telemetry is off (TOKENPAK_DB=%s): requests are forwarded, nothing is recorded",
                settings.TOKENPAK_DB_LABEL,
            )
