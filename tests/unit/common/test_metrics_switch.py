"""SWITCHBOARD_METRICS_ENABLED=false: what `setup_metrics` switches off, in-process (the real
processes: tests/e2e/test_observability.py)."""

from __future__ import annotations

import ast
import importlib
import types
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

from services.common import grpc_metrics
from services.common import metrics as common_metrics
from services.common.config import Settings
from services.common.metrics import OFF, enabled, setup_metrics, start_metrics_server
from services.edge.app import create_app, metrics_middleware

SERVICES = Path(__file__).resolve().parents[3] / "services"
OWNERS = ("services.edge.metrics", "services.agent_service.metrics", "services.upload_service.metrics")
"""The modules whose metric objects `setup_metrics` replaces."""


@pytest.fixture
def switchable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Metrics on again after the test (`setup_metrics(False, ...)` is for the rest of a process)."""
    monkeypatch.setattr(common_metrics, "_enabled", True)


def _owner() -> types.ModuleType:
    registry = CollectorRegistry()
    module = types.ModuleType("owner")
    module.CALLS = Counter("calls_total", "calls", ["method"], registry=registry)
    module.COMMIT = Histogram("seconds", "seconds", ["outcome"], registry=registry).labels("commit")
    module.IN_FLIGHT = Gauge("in_flight", "in flight", registry=registry)
    module.LABELS = ("commit", "rollback")
    module.observe = lambda: module.COMMIT.observe(0.1)
    return module


def test_metrics_on_changes_nothing(switchable: None) -> None:
    owner = _owner()
    kept = dict(vars(owner))
    setup_metrics(True, owner)
    assert enabled()
    assert vars(owner) == kept
    assert [type(i) for i in grpc_metrics.server_interceptors()] == [grpc_metrics.MetricsInterceptor]


def test_metrics_off_replaces_every_metric_object_and_turns_the_rest_off(switchable: None) -> None:
    owner = _owner()
    setup_metrics(False, owner)
    assert not enabled()
    assert owner.CALLS is OFF and owner.COMMIT is OFF and owner.IN_FLIGHT is OFF
    assert owner.LABELS == ("commit", "rollback")  # anything else stays
    owner.observe()  # code that observes through the module reaches the stand-in
    assert grpc_metrics.server_interceptors() == []
    assert start_metrics_server("127.0.0.1:0", setting="SWITCHBOARD_AGENT_METRICS_LISTEN") is None


def test_the_stand_in_takes_every_call_the_services_make() -> None:
    OFF.labels("a", "b").inc()
    OFF.labels(method="x").inc(3)
    OFF.inc()
    OFF.dec()
    OFF.set(1.0)
    OFF.observe(0.25)
    OFF.set_function(lambda: 1.0)
    assert OFF.labels("a") is OFF


def test_the_edge_has_neither_the_metrics_route_nor_the_middleware_with_metrics_off(switchable: None) -> None:
    settings = Settings(jwt_secret="metrics-switch-test-secret-" + "x" * 32)
    on = create_app(settings)
    assert metrics_middleware in on.middlewares
    assert "/metrics" in {resource.canonical for resource in on.router.resources()}
    setup_metrics(False)
    off = create_app(settings)
    assert metrics_middleware not in off.middlewares
    assert "/metrics" not in {resource.canonical for resource in off.router.resources()}


def test_the_setting_defaults_to_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SWITCHBOARD_METRICS_ENABLED", raising=False)
    assert Settings().metrics_enabled is True
    monkeypatch.setenv("SWITCHBOARD_METRICS_ENABLED", "false")
    assert Settings().metrics_enabled is False


def _metric_objects(module: str) -> set[str]:
    names = vars(importlib.import_module(module)).items()
    return {name for name, value in names if isinstance(value, MetricWrapperBase)}


def test_no_module_binds_a_metric_object_by_name() -> None:
    """The switch replaces the owners' globals: code that imported a metric object itself
    (`from services.agent_service.metrics import STORE_COMMIT`) would keep the real one."""
    objects = {owner: _metric_objects(owner) for owner in OWNERS}
    assert all(objects.values())
    bound = []
    for path in SERVICES.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module in objects:
                bound += [f"{path}: {a.name}" for a in node.names if a.name in objects[node.module]]
    assert bound == []
