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
process exports only its own. The exception: an agent service with `SWITCHBOARD_AGENT_WORKERS` > 1
(`services/agent_service/workers.py`) runs its workers in prometheus_client's multiprocess mode
(`PROMETHEUS_MULTIPROC_DIR`, see `multiprocess`): each worker writes its values to files of its own,
serves no port, and the supervisor serves them all, merged, on the agent's metrics port.
Tenant is never a label (unbounded); labels are operations, methods, status codes, provider and
model names, tool and agent names of the app (bounded by the app).

Metrics are on by default; `SWITCHBOARD_METRICS_ENABLED=false` switches them off in every service.
Each service calls `setup_metrics` once at start, as it calls `tracing.setup_tracing`; with metrics
off it then runs without any of them:
- no scrape port (`start_metrics_server` starts nothing) and no `GET /metrics` route on the edge;
- no gRPC metrics interceptor (`grpc_metrics.server_interceptors` is empty) and no edge metrics
  middleware;
- every metric object of the service's metrics module is replaced by `OFF`, whose methods do
  nothing, so the code that observes them, wherever it is (`metrics.STORE_COMMIT.observe(...)` in the
  store, `metrics.DIRECT.inc()` in the upload service), makes no observation;
- the agent service does not look at the events it streams, nor at its runs' SDK events, to count
  them (`ChatService` and `Responder` ask `enabled()` once, when they are made).
Code reaches a metric object through its module (`metrics.X`), or binds it after `setup_metrics`,
so that the switch reaches it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Final
from wsgiref.simple_server import WSGIServer

from prometheus_client import REGISTRY, CollectorRegistry, start_http_server, values
from prometheus_client.metrics import MetricWrapperBase

log = logging.getLogger(__name__)

LATENCY_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Seconds, for requests and time to first token (a model answers in 0.2-5 s)."""
STREAM_BUCKETS: Final = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
"""Seconds, for whole streams (up to the edge's 300 s stream deadline)."""
DB_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
"""Seconds, for store transactions."""

_enabled = True


def enabled() -> bool:
    """Whether this process keeps metrics (True unless `setup_metrics` switched them off)."""
    return _enabled


def multiprocess() -> bool:
    """Whether this process keeps its metric values in prometheus_client's multiprocess files
    (`PROMETHEUS_MULTIPROC_DIR` was set when prometheus_client was imported: the agent service's
    workers). Callback gauges (`Gauge.set_function`) are not exported then: only values written to
    the files are."""
    return bool(getattr(values.ValueClass, "_multiprocess", False))


class _Off:
    """What a metric, or a child bound to its labels, becomes when metrics are off: a counter, gauge
    or histogram whose every method does nothing (`labels` gives itself back)."""

    __slots__ = ()

    def labels(self, *values: object, **labels: object) -> _Off:
        return self

    def inc(self, amount: float = 1) -> None:
        pass

    def dec(self, amount: float = 1) -> None:
        pass

    def set(self, value: float) -> None:
        pass

    def observe(self, amount: float) -> None:
        pass

    def set_function(self, function: Callable[[], float]) -> None:
        pass

    def __repr__(self) -> str:
        return "metrics.OFF"


OFF: Final = _Off()
"""The stand-in of every metric object when metrics are off."""


def setup_metrics(enabled: bool, *owners: ModuleType) -> None:
    """Keep metrics (`enabled`: nothing to do) or switch them off for the rest of the process.

    Called once by each service at start, before it builds its server or application; `owners` are
    the modules that hold its metric objects (`services/agent_service/metrics.py`, ...). Off: every
    prometheus_client metric, and every labelled child, among their globals becomes `OFF`, and
    `enabled()` is False from then on (see the module docstring for what that leaves out).
    """
    global _enabled
    if enabled:
        return
    _enabled = False
    for module in owners:
        for name, value in list(vars(module).items()):
            if isinstance(value, MetricWrapperBase):
                setattr(module, name, OFF)
    log.info("metrics off (SWITCHBOARD_METRICS_ENABLED=false)")


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


def start_metrics_server(
    listen: str, *, setting: str, registry: CollectorRegistry = REGISTRY
) -> MetricsServer | None:
    """Serve `registry` (the default one unless given) on `listen` (`host:port`); None when `listen`
    is empty or metrics are off (`setup_metrics`).

    Scrapes are answered in a thread of prometheus_client's own, never on the event loop.
    """
    if not listen.strip() or not _enabled:
        return None
    try:
        host, port = split_listen(listen)
    except ValueError as error:
        raise ValueError(f"{setting}: {error}") from None
    server, thread = start_http_server(port, addr=host, registry=registry)
    metrics = MetricsServer(server, thread)
    log.info("metrics on http://%s:%d/metrics", f"[{host}]" if ":" in host else host, metrics.port)
    return metrics
