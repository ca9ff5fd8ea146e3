"""Logging for every service: text (the default) or JSON lines (`SWITCHBOARD_LOG_FORMAT=json`).

Every record gets `request_id`, `tenant` and `operation` from the request's context variables when
they are known (the edge sets them for its requests, the gRPC interceptors for each call:
`services/common/grpc_auth.py`, `services/common/grpc_metrics.py`), so a JSON line can be found by
request id across services without parsing the message. Text lines keep their format (messages that
concern a request already start with `[request id]`). When tracing is on (`services/common/tracing.py`),
JSON lines also carry `trace_id` and `span_id` of the span that was current when the line was written.

User content (message text, file contents, tool arguments) is not logged at INFO or above; some
DEBUG lines name users and tenants. What is not ours to format stays as it is: gRPC's C core writes
its rare diagnostics to stderr itself, and a crash's traceback is printed by Python.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from contextvars import ContextVar
from typing import Final

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

from services.common.grpc_auth import current_principal, current_request_id

current_operation: ContextVar[str] = ContextVar("current_operation", default="-")
"""The ChatKit operation (edge) or the gRPC method (services) of the request being served."""

TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JSON_FIELDS: Final = ("asctime", "levelname", "name", "message")
CONTEXT_FIELDS: Final = ("request_id", "tenant", "operation", "trace_id", "span_id")


def _no_trace() -> tuple[str, str]:
    return "-", "-"


trace_ids: Callable[[], tuple[str, str]] = _no_trace
"""The current (trace id, span id) in hex, "-" when none; `tracing.setup_tracing` replaces it."""


class RequestContextFilter(logging.Filter):
    """Adds `request_id`, `tenant`, `operation`, `trace_id` and `span_id` to every record ("-" when
    not known)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = current_request_id.get()
        principal = current_principal.get(None)
        record.tenant = principal.tenant if principal is not None else "-"
        record.operation = current_operation.get()
        record.trace_id, record.span_id = trace_ids()
        return True


class _JsonFormatter(JsonFormatter):
    """JSON lines; context fields that are not known ("-") are left out."""

    def add_fields(
        self,
        log_data: dict[str, object],
        record: logging.LogRecord,
        message_dict: dict[str, object],
    ) -> None:
        super().add_fields(log_data, record, message_dict)
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, "-")
            if value != "-":
                log_data[name] = value


def json_formatter(*, worker: int | None = None) -> logging.Formatter:
    return _JsonFormatter(
        list(JSON_FIELDS),
        rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        reserved_attrs=[*RESERVED_ATTRS, *CONTEXT_FIELDS],
        static_fields={"worker": worker} if worker is not None else None,
    )


def text_format(worker: int | None = None) -> str:
    """TEXT_FORMAT; a worker's lines say which one wrote them (`... name [worker 2]: message`)."""
    if worker is None:
        return TEXT_FORMAT
    return TEXT_FORMAT.replace("%(name)s:", f"%(name)s [worker {worker}]:")


def configure_logging(level: str, log_format: str = "text", *, worker: int | None = None) -> None:
    """One stderr handler on the root logger, in the chosen format, with the context filter.

    `worker`: the index of an agent service worker (`SWITCHBOARD_AGENT_WORKERS` > 1), written on
    each of its lines (text) or as the `worker` field (JSON): the workers share one stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestContextFilter())
    handler.setFormatter(
        json_formatter(worker=worker) if log_format == "json" else logging.Formatter(text_format(worker))
    )
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    logging.captureWarnings(True)  # Python warnings become records too (JSON lines in JSON mode)
    if level.upper() != "DEBUG":
        # Alembic narrates its plugins and contexts at INFO; the store logs what a migration changed.
        logging.getLogger("alembic").setLevel(logging.WARNING)
