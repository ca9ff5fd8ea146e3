"""`python -m benchmarks.otlp_sink --port P`, a local OTLP/HTTP trace sink for the tracing variant.

It stands for the collector a deployment exports its traces to: it accepts what the services'
OpenTelemetry exporters send (`POST /v1/traces`, an `ExportTraceServiceRequest` in protobuf, plain
or gzip/deflate per `OTEL_EXPORTER_OTLP_COMPRESSION`: aiohttp decompresses it), counts the spans and
throws them away, and answers with an empty `ExportTraceServiceResponse`, as a collector does.
`GET /stats` reports what it received (requests, spans, spans by `service.name`, bytes) and its own
CPU seconds, so the report can show that tracing really ran; `GET /healthz` answers once it listens.

It runs as a process of its own, so its work is neither the load generator's nor the system's (a
collector runs elsewhere); it shares the machine, though, and its CPU is reported beside the
system's. Counting a batch costs a protobuf parse (the C implementation): well under a millisecond
for the SDK's batches of up to 512 spans.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any

from aiohttp import web
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

TRACES_PATH = "/v1/traces"
_ANSWER = ExportTraceServiceResponse().SerializeToString()


def count_spans(request: ExportTraceServiceRequest) -> dict[str, int]:
    """Spans in an export request, by the `service.name` of their resource ("" when it has none)."""
    counts: dict[str, int] = {}
    for resource_spans in request.resource_spans:
        service = next(
            (kv.value.string_value for kv in resource_spans.resource.attributes if kv.key == "service.name"),
            "",
        )
        spans = sum(len(scope_spans.spans) for scope_spans in resource_spans.scope_spans)
        counts[service] = counts.get(service, 0) + spans
    return counts


class Sink:
    """What the sink received so far."""

    def __init__(self) -> None:
        self.requests = 0
        self.spans = 0
        self.by_service: dict[str, int] = {}
        self.bytes = 0
        self.refused = 0

    async def traces(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.bytes += len(body)
        try:
            counts = count_spans(ExportTraceServiceRequest.FromString(body))
        except DecodeError:
            self.refused += 1
            raise web.HTTPBadRequest(text="not an OTLP ExportTraceServiceRequest") from None
        self.requests += 1
        for service, spans in counts.items():
            self.spans += spans
            self.by_service[service] = self.by_service.get(service, 0) + spans
        return web.Response(body=_ANSWER, content_type="application/x-protobuf")

    def stats(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "spans": self.spans,
            "spans_by_service": dict(sorted(self.by_service.items())),
            "bytes": self.bytes,
            "refused": self.refused,
            "cpu_s": time.process_time(),
        }

    async def stats_handler(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())


def create_app(sink: Sink | None = None) -> web.Application:
    """`POST /v1/traces` into `sink` (a new one by default), `GET /stats`, `GET /healthz`."""
    sink = sink or Sink()

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post(TRACES_PATH, sink.traces)
    app.router.add_get("/stats", sink.stats_handler)
    app.router.add_get("/healthz", healthz)
    return app


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4318)
    args = parser.parse_args(argv)
    web.run_app(create_app(), host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
