"""The one NinjaAPI. Routers added earlier win: the proxy, with its catch-alls, goes last."""

from ninja import NinjaAPI

from proxy.api import router as proxy_router
from telemetry.api import router as telemetry_router

api = NinjaAPI(
    title="TokenPak",
    urls_namespace="tokenpak",
    docs_url="/api/docs",
    openapi_url="/api/openapi.json",
)
api.add_router("/v1/telemetry", telemetry_router)
api.add_router("", proxy_router)
