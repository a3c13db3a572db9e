"""The one NinjaAPI. Routers added earlier win: the proxy, with its catch-alls, goes last."""

from ninja import NinjaAPI
from ninja.errors import ValidationError

from proxy.api import router as proxy_router
from telemetry import api as telemetry_api
from telemetry.reports import ReportError

api = NinjaAPI(
    title="TokenPak",
    urls_namespace="tokenpak",
    docs_url="/api/docs",
    openapi_url="/api/openapi.json",
)
api.add_router("/v1/telemetry", telemetry_api.router)
api.add_router("", proxy_router)
# Only the telemetry routes take typed parameters: their errors are one-line 400s. (ninja types
# a handler's exception as `E | type[E]`; it passes the instance.)
api.add_exception_handler(ReportError, telemetry_api.bad_report_input)  # type: ignore[arg-type]
api.add_exception_handler(ValidationError, telemetry_api.bad_parameter)  # type: ignore[arg-type]
