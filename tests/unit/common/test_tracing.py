"""When tracing is on (the OTEL_* rules), and what it adds to the JSON log lines."""

from __future__ import annotations

import json
import logging

import pytest

from services.common import logs
from services.common.tracing import wanted


@pytest.mark.parametrize(
    ("environ", "on"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "x", "OTEL_BSP_SCHEDULE_DELAY": "100"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}, False),
    ],
)
def test_tracing_is_off_unless_the_environment_asks(environ: dict[str, str], on: bool) -> None:
    assert wanted(environ) is on


def _line(record_ids: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    monkeypatch.setattr(logs, "trace_ids", lambda: record_ids)
    record = logging.LogRecord("switchboard.test", logging.INFO, __file__, 1, "hello", None, None)
    logs.RequestContextFilter().filter(record)
    return dict(json.loads(logs.json_formatter().format(record)))


def test_json_lines_carry_the_trace_and_span_ids_when_there_are_some(monkeypatch: pytest.MonkeyPatch) -> None:
    line = _line(("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"), monkeypatch)
    assert line["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert line["span_id"] == "b7ad6b7169203331"
    assert "trace_id" not in _line(("-", "-"), monkeypatch)
