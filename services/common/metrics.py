"""Prometheus metrics, shared pieces: the scrape port of the gRPC services and the bucket layouts.

Why prometheus_client and not OpenTelemetry metrics: Prometheus is what Kubernetes clusters scrape
(ServiceMonitor/PodMonitor, the HPA through prometheus-adapter), the text format needs no collector
in between, and prometheus_client is one small pure-Python dependency whose hot-path cost is a lock
and an add per observation. OpenTelemetry metrics would need the SDK plus an exporter (or an
OTLP collector) to reach the same Prometheus; traces, where OpenTelemetry is the standard, are a
separate matter.

Each process keeps its metrics in prometheus_client's default registry; metric objects are module
globals of the service that owns them (`services/edge/metrics.py`, `services/agent_service/metrics.py`,
`services/upload_service/metrics.py`, the gRPC interceptor in `services/common/grpc_metrics.py`), so a
process exports only its own. Tenant is never a label (unbounded); labels are operations, methods,
status codes, provider and model names, tool and agent names of the app (bounded by the app).
"""

from __future__ import annotations

import logging
import threading
from typing import Final
from wsgiref.simple_server import WSGIServer

from prometheus_client import start_http_server

log = logging.getLogger(__name__)

LATENCY_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Seconds, for requests and time to first token (a model answers in 0.2-5 s)."""
STREAM_BUCKETS: Final = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
"""Seconds, for whole streams (up to the edge's 300 s stream deadline)."""
DB_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
"""Seconds, for store transactions."""


class MetricsServer:
    """prometheus_client's HTTP server (a daemon thread serving `GET /metrics`), stoppable."""

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def split_listen(listen: str) -> tuple[str, int]:
    """`host:port` (`[v6]:port` too) -> (host, port); ValueError for anything else."""
    host, sep, port = listen.strip().rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"{listen!r} is not host:port")
    return host.strip("[]"), int(port)


def start_metrics_server(listen: str, *, setting: str) -> MetricsServer | None:
    """Serve the default registry on `listen` (`host:port`), None when `listen` is empty (off).

    Scrapes are answered in a thread of prometheus_client's own, never on the event loop.
    """
    if not listen.strip():
        return None
    try:
        host, port = split_listen(listen)
    except ValueError as error:
        raise ValueError(f"{setting}: {error}") from None
    server, thread = start_http_server(port, addr=host)
    metrics = MetricsServer(server, thread)
    log.info("metrics on http://%s:%d/metrics", f"[{host}]" if ":" in host else host, metrics.port)
    return metrics
