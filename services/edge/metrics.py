"""The edge's metrics, served at `GET /metrics` on the edge's own port (no token: keep the path off
public ingress, see the README's "Metrics and logs").

- `switchboard_http_requests_total{route, operation, status}`: requests by route (the route's
  pattern, `unmatched` for unknown paths), ChatKit operation (`threads.create`, ..., `upload`, `-`
  when none) and HTTP status (499: the client went away)
- `switchboard_http_request_duration_seconds{route, operation}` (histogram; streams: until they end)
- `switchboard_edge_streams_in_flight` (gauge): SSE responses being streamed
"""

from __future__ import annotations

from typing import Final

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

from services.common.metrics import LATENCY_BUCKETS

HTTP_REQUESTS: Final = Counter(
    "switchboard_http_requests_total", "HTTP requests", ["route", "operation", "status"]
)
HTTP_SECONDS: Final = Histogram(
    "switchboard_http_request_duration_seconds",
    "HTTP request duration (streams: until their end)",
    ["route", "operation"],
    buckets=LATENCY_BUCKETS,
)
STREAMS_IN_FLIGHT: Final = Gauge("switchboard_edge_streams_in_flight", "SSE responses being streamed")


def route_of(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def observe(request: web.Request, operation: str, status: int, seconds: float) -> None:
    route = route_of(request)
    HTTP_REQUESTS.labels(route, operation, str(status)).inc()
    HTTP_SECONDS.labels(route, operation).observe(seconds)


async def metrics_handler(request: web.Request) -> web.Response:
    """`GET /metrics`: the process's metrics in Prometheus' text format."""
    response = web.Response(body=generate_latest())
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response
