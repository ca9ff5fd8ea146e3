"""The optional monitoring component (k8s/components/monitoring): on top of the production overlay it
renders, its ServiceMonitors validate against the Prometheus Operator's CRD schema and reach every
service's metrics port, and the Grafana dashboard queries only metrics the services export."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Final

import jsonschema
import pytest
import yaml

from tests.k8s.manifests import K8S, Rendered, kubectl, selector_matches

ROOT: Final = K8S.parent
CRD: Final = Path(__file__).parent / "crds" / "monitoring.coreos.com_servicemonitors.yaml"
DASHBOARD: Final = K8S / "components" / "monitoring" / "dashboard.json"
_METRIC_NAME: Final = re.compile(r'"(switchboard_[a-z_]+)"')
_QUERY_METRIC: Final = re.compile(r"\b(switchboard_[a-z_]+?)(?:_bucket|_sum|_count)?\b(?=[{\[\s)])")


@pytest.fixture(scope="module")
def monitored(tmp_path_factory: pytest.TempPathFactory) -> Rendered:
    """The production overlay with the component, rendered from a scratch copy of k8s/."""
    root = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(K8S, root)
    overlay = root / "overlays" / "production-monitoring"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: switchboard\n"
        "resources:\n  - ../production\ncomponents:\n  - ../../components/monitoring\n"
    )
    done = subprocess.run([kubectl(), "kustomize", str(overlay)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return Rendered("production-monitoring", [doc for doc in yaml.safe_load_all(done.stdout) if doc])


def _schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return dict(version["schema"]["openAPIV3Schema"])


def test_service_monitors_validate_against_the_crd(monitored: Rendered) -> None:
    monitors = monitored.of_kind("ServiceMonitor")
    assert {m["metadata"]["name"] for m in monitors} == {"switchboard-services", "switchboard-edge"}
    schema = _schema()
    for monitor in monitors:
        jsonschema.validate(monitor, schema)
        assert monitor["metadata"]["namespace"] == "switchboard"


def test_the_schema_check_can_fail(monitored: Rendered) -> None:
    broken = json.loads(json.dumps(monitored.of_kind("ServiceMonitor")[0]))
    broken["spec"]["endpoints"][0]["interval"] = "every now and then"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, _schema())


def test_every_service_is_scraped_on_a_port_it_has(monitored: Rendered) -> None:
    scraped: set[str] = set()
    for monitor in monitored.of_kind("ServiceMonitor"):
        selector = monitor["spec"]["selector"]
        for service in monitored.of_kind("Service"):
            if not selector_matches(selector, service["metadata"].get("labels", {})):
                continue
            ports = {port.get("name") for port in service["spec"]["ports"]}
            for endpoint in monitor["spec"]["endpoints"]:
                if endpoint["port"] in ports:
                    scraped.add(service["metadata"]["name"])
    components = {
        s["metadata"]["labels"].get("app.kubernetes.io/component")
        for s in monitored.of_kind("Service")
        if s["metadata"]["name"] in scraped
    }
    assert components == {"edge", "agent", "upload"}, scraped


def test_the_dashboard_ships_as_a_sidecar_config_map(monitored: Rendered) -> None:
    config_map = monitored.get("ConfigMap", "switchboard-grafana-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(config_map["data"]["dashboard.json"])["uid"] == "switchboard"


def test_the_dashboard_queries_only_exported_metrics() -> None:
    exported = {
        name
        for path in (ROOT / "services").rglob("*metrics*.py")
        for name in _METRIC_NAME.findall(path.read_text())
    }
    assert exported, "no metric definitions found"
    dashboard = json.loads(DASHBOARD.read_text())
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in _QUERY_METRIC.findall(target["expr"])
    }
    assert queried, "the dashboard queries nothing"
    assert queried <= exported, queried - exported
    for needed in ("switchboard_agent_streams_in_flight", "switchboard_model_tokens_total"):
        assert needed in queried
