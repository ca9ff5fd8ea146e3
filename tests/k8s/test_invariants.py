"""Invariants read from the rendered overlays, held against what the code does.

Ports, probes and addresses are compared with the settings the code reads (services/common/config.py
defaults plus the environment each manifest sets); the set of recognised variables comes from
`Settings.model_fields`; gRPC health service names and HTTP probe paths come from the servers'
modules. Nothing here needs a cluster.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import pytest

from services.agent_service import server as agent_server
from services.cli import build_parser
from services.common.config import Settings
from services.common.grpc_server import server_options
from services.edge import app as edge_app
from services.limits.store import MAX_POOL
from services.upload_service import server as upload_server
from tests.k8s.manifests import (
    K8S,
    ROOT,
    SERVICES,
    WILDCARD_HOSTS,
    Container,
    Obj,
    Peer,
    Policies,
    Rendered,
    field_default,
    listen_port,
    render_text,
    selector_matches,
    service_refs,
    setting_aliases,
    settings_read_by,
)

ALIASES: Final = setting_aliases()
FIELD_ENV: Final = {field: env for env, field in ALIASES.items()}

# The gRPC service each server registers with grpc.health.v1 (read from the servers' modules).
HEALTH_SERVICE: Final = {"agent": agent_server.SERVICE_NAME, "upload": upload_server.SERVICE_NAME}
# The listen settings of each service (field names of Settings).
LISTEN: Final = {"agent": "agent_listen", "upload": "upload_listen"}
METRICS_LISTEN: Final = {"agent": "agent_metrics_listen", "upload": "upload_metrics_listen"}
# Settings a service needs in a cluster although they have defaults: the defaults are the embedded
# one-machine setup (a random per-process JWT key in ./var, SQLite in ./var, dev MinIO keys).
# How tokens are verified is checked on its own (test_every_service_verifies_tokens_the_same_way).
REQUIRED: Final = {
    "agent": {"agent_listen", "upload_address", "database_url", "data_dir"},
    "upload": {"upload_listen", "minio_endpoint", "minio_access_key", "minio_secret_key", "database_url"},
    "edge": {"edge_host", "agent_address", "upload_address"},
}
# Settings whose values are credentials: only ever from a Secret.
SECRET_FIELD: Final = re.compile(r"secret|api_key|access_key|password|database_url")
# The client address settings and the service they must reach.
CLIENT_ADDRESSES: Final = {
    ("edge", "agent_address"): "agent",
    ("edge", "upload_address"): "upload",
    ("agent", "upload_address"): "upload",
}
# Seconds between SIGTERM's drain and the kill that the tests require on top of the drain.
TERMINATION_MARGIN_S: Final = 5
# PostgreSQL's default max_connections (100) less superuser_reserved_connections (3).
DATABASE_CONNECTIONS: Final = 97
# Settings each service sizes for itself (its own connection pool): they may differ between services.
PER_PROCESS: Final = frozenset({"SWITCHBOARD_DATABASE_POOL_SIZE", "SWITCHBOARD_DATABASE_MAX_OVERFLOW"})
MIN_PRESTOP_S: Final = 3


def _value(container: Container, field: str) -> Any:
    """The setting as the process will see it: the manifest's variable, else the code's default."""
    env = FIELD_ENV[field]
    return container.env[env] if env in container.env else field_default(field)


def _edge_routes() -> dict[str, str]:
    """GET path -> handler name, from the edge application itself."""
    app = edge_app.create_app(Settings(jwt_secret="k8s-invariant-test-secret-" + "x" * 32))
    routes = {}
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        if route.method == "GET" and "path" in info:
            routes[str(info["path"])] = getattr(route.handler, "__name__", "")
    return routes


def _sleep_seconds(container: Container) -> float:
    pre_stop = (container.spec.get("lifecycle") or {}).get("preStop") or {}
    if "sleep" in pre_stop:
        return float(pre_stop["sleep"]["seconds"])
    command = (pre_stop.get("exec") or {}).get("command") or []
    assert command[:1] == ["sleep"] and len(command) == 2, (
        f"{container.name}: preStop is not a pause: {pre_stop}"
    )
    return float(command[1])


def _long_running(rendered: Rendered) -> list[Container]:
    return [c for c in rendered.containers(init=False) if c.kind in ("Deployment", "StatefulSet")]


# --------------------------------------------------------------------------- Services and ports


def test_every_service_selects_a_pod_template_and_reaches_a_container_port(overlay: Rendered) -> None:
    for svc in overlay.of_kind("Service"):
        name = svc["metadata"]["name"]
        selector = svc["spec"].get("selector")
        assert selector, f"Service {name} has no selector"
        selected = [
            w
            for w in overlay.workloads()
            if w["kind"] != "Job"
            and selector_matches({"matchLabels": selector}, w["spec"]["template"]["metadata"]["labels"])
        ]
        assert selected, f"Service {name}'s selector {selector} matches no pod template"
        for port in svc["spec"]["ports"]:
            _, number = overlay.backend(name, port["port"])
            assert number, f"Service {name} port {port} reaches no container port"
        for workload in overlay.workloads():
            if workload["kind"] == "StatefulSet" and workload["spec"]["serviceName"] == name:
                assert workload in selected, (
                    f"{name} governs StatefulSet {workload['metadata']['name']} but does not select it"
                )


def test_services_listen_where_their_manifests_say(overlay: Rendered) -> None:
    services = overlay.service_containers()
    assert set(services) == set(SERVICES), f"Deployments run {sorted(services)}, expected {sorted(SERVICES)}"
    for service, container in services.items():
        if service == "edge":
            host = _value(container, "edge_host")
            ports = [int(_value(container, "edge_port"))]  # /metrics is on the same port
        else:
            host, port = listen_port(_value(container, LISTEN[service]))
            metrics_host, metrics_port = listen_port(_value(container, METRICS_LISTEN[service]))
            assert metrics_host in WILDCARD_HOSTS, f"{container.name}: Prometheus cannot reach its metrics"
            ports = [port, metrics_port]
        assert host in WILDCARD_HOSTS, f"{container.name} listens on {host}: unreachable from other pods"
        declared = [p["containerPort"] for p in container.spec["ports"]]
        assert declared == ports, f"{container.name} listens on {ports} but declares ports {declared}"
        (svc,) = overlay.services_selecting(container.pod_labels)
        assert [
            container.container_port(p.get("targetPort", p["port"])) for p in svc["spec"]["ports"]
        ] == ports
        annotations = svc["metadata"].get("annotations", {})
        assert annotations.get("prometheus.io/scrape") == "true", svc["metadata"]["name"]
        assert int(annotations["prometheus.io/port"]) == ports[-1]
        assert annotations["prometheus.io/path"] == "/metrics"


def test_grpc_backends_are_headless_and_called_through_dns(overlay: Rendered) -> None:
    """kube-proxy balances connections, not calls: gRPC callers resolve every pod themselves
    (dns:/// + a headless Service) and balance calls with round_robin; servers recycle connections
    (max_connection_age) so that new pods get traffic."""
    services = overlay.service_containers()
    for (caller, field), callee in CLIENT_ADDRESSES.items():
        container = services[caller]
        value = str(_value(container, field))
        assert value.startswith("dns:///"), (
            f"{container.name}: {FIELD_ENV[field]}={value} is not a dns:/// target"
        )
        (ref,) = service_refs(value, overlay)
        svc = overlay.get("Service", ref.service)
        assert svc["spec"].get("clusterIP") == "None", (
            f"Service {ref.service} must be headless for round_robin"
        )
        target, port = overlay.backend(ref.service, ref.port)
        assert target.service == callee, (
            f"{container.name}: {FIELD_ENV[field]} reaches {target.name}, not the {callee}"
        )
        if callee in LISTEN:
            assert port == listen_port(_value(target, LISTEN[callee]))[1]
    # Both servers take their channel arguments from the shared helper, which recycles connections.
    assert dict(server_options(Settings(), max_message_bytes=1)).get("grpc.max_connection_age_ms", 0) > 0
    for module in (agent_server, upload_server):
        source = Path(str(module.__file__)).read_text()
        assert "server_options(" in source, f"{module.__name__} does not use the shared server options"


def test_backing_stores_are_reached_where_they_listen(overlay: Rendered) -> None:
    services = overlay.service_containers()
    endpoint = str(_value(services["upload"], "minio_endpoint"))
    refs = service_refs(endpoint, overlay)
    if overlay.overlay == "dev":
        (ref,) = refs
        target, port = overlay.backend(ref.service, ref.port)
        assert target.spec["name"] == "minio" and port == ref.port
        url = urlsplit(services["agent"].env["SWITCHBOARD_DATABASE_URL"])
        (ref,) = service_refs(f"{url.hostname}:{url.port}", overlay)
        target, port = overlay.backend(ref.service, ref.port)
        assert target.spec["name"] == "postgres" and port == 5432
    else:
        assert not refs, f"production's MINIO_ENDPOINT {endpoint} names an in-cluster Service"


# --------------------------------------------------------------------------- probes


def test_grpc_services_have_native_grpc_probes(overlay: Rendered) -> None:
    services = overlay.service_containers()
    for service, health_name in HEALTH_SERVICE.items():
        container = services[service]
        port = listen_port(_value(container, LISTEN[service]))[1]
        readiness = container.spec["readinessProbe"]
        assert readiness.get("grpc") == {"port": port, "service": health_name}, (
            f"{container.name}: {readiness}"
        )
        liveness = container.spec["livenessProbe"]
        if service == "upload":
            # Documented exception (k8s/base/upload.yaml): "" is NOT_SERVING until the bucket exists.
            assert liveness.get("tcpSocket") == {"port": port}, liveness
        else:
            assert liveness.get("grpc", {}).get("port") == port, liveness
            assert liveness["grpc"].get("service", "") in ("", health_name)
        startup = container.spec.get("startupProbe")
        if startup is not None:
            assert startup.get("grpc", startup.get("tcpSocket", {})).get("port") == port
    assert "startupProbe" in services["agent"].spec, (
        "the agent imports the Agents SDK and seeds its ERP db: slow"
    )


def test_edge_has_http_probes_on_its_routes(overlay: Rendered) -> None:
    container = overlay.service_containers()["edge"]
    routes = _edge_routes()
    port = int(_value(container, "edge_port"))
    for kind, handler in (("livenessProbe", "healthz"), ("readinessProbe", "readyz")):
        probe = container.spec[kind]["httpGet"]
        assert container.container_port(probe["port"]) == port, probe
        assert routes.get(probe["path"]) == handler, (
            f"{kind} {probe['path']} is not the edge's {handler} route"
        )
    # /readyz waits up to _READY_TIMEOUT_S for the agent's health answer: the probe must wait longer.
    assert container.spec["readinessProbe"]["timeoutSeconds"] > edge_app._READY_TIMEOUT_S


def test_every_long_running_container_has_probes(overlay: Rendered) -> None:
    for container in _long_running(overlay):
        for kind in ("livenessProbe", "readinessProbe"):
            assert kind in container.spec, f"{container.name} has no {kind}"


# --------------------------------------------------------------------------- environment


def test_every_required_setting_is_set(overlay: Rendered) -> None:
    for service, container in overlay.service_containers().items():
        reads = settings_read_by(service)
        assert REQUIRED[service] <= reads, f"the {service} no longer reads {REQUIRED[service] - reads}"
        loopback = {f for f in reads if "127.0.0.1" in str(field_default(f))}
        missing = {FIELD_ENV[f] for f in REQUIRED[service] | loopback} - set(container.env)
        assert not missing, f"{container.name} does not set {sorted(missing)}"
        for field in loopback:
            assert "127.0.0.1" not in container.env[FIELD_ENV[field]], f"{container.name}: {FIELD_ENV[field]}"
        data_dir = Path(str(_value(container, "data_dir")))
        if "data_dir" in REQUIRED[service]:
            mounts = {m["mountPath"] for m in container.spec.get("volumeMounts") or []}
            assert data_dir.is_absolute() and str(data_dir) in mounts, (
                f"{container.name}: data dir {data_dir} is not a volume"
            )


def test_every_service_verifies_tokens_the_same_way(overlay: Rendered) -> None:
    """Either the identity provider's keys (issuer or JWKS URL, and an audience) or, in dev, the
    shared secret from a Secret: every service the same (test_settings_shared_by_services_agree)."""
    for service, container in overlay.service_containers().items():
        assert "jwt_secret" in settings_read_by(service) and "oidc_issuer" in settings_read_by(service)
        env = container.env
        if "SWITCHBOARD_OIDC_ISSUER" in env or "SWITCHBOARD_JWKS_URL" in env:
            assert env.get("SWITCHBOARD_JWT_AUDIENCE"), f"{container.name}: provider tokens need an audience"
            if "SWITCHBOARD_JWKS_URL" in env:
                assert env.get("SWITCHBOARD_JWT_ISSUER"), f"{container.name}: a JWKS URL needs an issuer"
        else:
            assert "SWITCHBOARD_JWT_SECRET" in container.secret_vars, (
                f"{container.name} has neither an identity provider nor a shared secret from a Secret"
            )


def test_no_setting_is_set_that_the_code_ignores(overlay: Rendered) -> None:
    for service, container in overlay.service_containers().items():
        read = {FIELD_ENV[f] for f in settings_read_by(service)}
        ignored = set(container.env) - read
        assert not ignored, f"{container.name} sets {sorted(ignored)}, which the {service} code never reads"
    for container in overlay.containers():
        if container.is_switchboard:
            unknown = set(container.env) - set(ALIASES)
            assert not unknown, f"{container.name} sets {sorted(unknown)}, which no setting reads"


def test_credentials_come_from_secrets(overlay: Rendered) -> None:
    for container in overlay.containers():
        if not container.is_switchboard:
            continue
        for env, field in ALIASES.items():
            if SECRET_FIELD.search(field) and env in container.env:
                assert env in container.secret_vars, f"{container.name}: {env} must come from a Secret"


def test_settings_shared_by_services_agree(overlay: Rendered) -> None:
    values: dict[str, dict[str, str]] = {}
    for container in overlay.containers():
        if container.is_switchboard:
            for env, value in container.env.items():
                values.setdefault(env, {})[container.name] = value
    for env, seen in values.items():
        if env not in PER_PROCESS:
            assert len(set(seen.values())) == 1, f"{env} differs between containers: {seen}"
    refs: dict[str, set[str]] = {}
    for container in overlay.containers():
        for item in container.spec.get("env") or []:
            ref = (item.get("valueFrom") or {}).get("secretKeyRef")
            if ref:
                refs.setdefault(item["name"], set()).add(f"{ref['name']}/{ref['key']}")
    for env, sources in refs.items():
        if env.startswith(("SWITCHBOARD_", "MINIO_")):
            assert len(sources) == 1, f"{env} comes from different Secrets: {sources}"


def test_jobs_run_what_the_code_offers(overlay: Rendered) -> None:
    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    migrate = overlay.container("Job", "switchboard-migrate")
    assert not migrate.spec.get("command"), "the migrate Job runs the image's entrypoint (switchboard)"
    assert migrate.spec["args"][0] in commands.choices, (
        f"`switchboard {migrate.spec['args'][0]}` does not exist"
    )
    assert "SWITCHBOARD_DATABASE_URL" in migrate.env
    bucket = overlay.container("Job", "switchboard-bucket")
    script = Path(bucket.spec["command"][-1])
    (mount,) = [m for m in bucket.spec["volumeMounts"] if m["mountPath"] == str(script.parent)]
    (volume,) = [v for v in bucket.pod_spec["volumes"] if v["name"] == mount["name"]]
    data = overlay.config_map(volume["configMap"]["name"])
    assert data is not None and data[script.name] == (K8S / "base" / script.name).read_text()
    upload = overlay.service_containers()["upload"]
    for env in ("MINIO_ENDPOINT", "MINIO_BUCKET", "MINIO_SECURE", "MINIO_REGION", "MINIO_ACCESS_KEY"):
        assert bucket.env.get(env) == upload.env.get(env), env
    for job in (migrate, bucket):
        assert job.pod_spec["restartPolicy"] == "Never" and job.workload["spec"]["backoffLimit"] >= 3


def test_agent_pods_wait_for_the_schema_without_changing_it(overlay: Rendered) -> None:
    """The agent refuses an older schema: its pods wait in an init container until the migrate Job
    has run, with `switchboard migrate --check` (which changes nothing), against the same database."""
    agent = overlay.service_containers()["agent"]
    (init,) = overlay.init_containers("Deployment", agent.workload["metadata"]["name"])
    script = init.spec["command"][-1]
    match = re.search(r"until (switchboard (migrate --check)); do", script)
    assert init.spec["command"][:2] == ["sh", "-c"] and match, script
    arguments = build_parser().parse_args(match.group(2).split())
    assert arguments.command == "migrate" and arguments.check is True
    assert "trap" in script and "TERM" in script, "sh as PID 1 ignores SIGTERM unless trapped"
    assert init.env["SWITCHBOARD_DATABASE_URL"] == agent.env["SWITCHBOARD_DATABASE_URL"]
    migrate = overlay.container("Job", "switchboard-migrate")
    assert init.spec["image"] == migrate.spec["image"] == agent.spec["image"]


# --------------------------------------------------------------------------- security


def test_every_container_is_locked_down(overlay: Rendered) -> None:
    for container in overlay.containers():
        pod = container.pod_spec
        pod_ctx = pod.get("securityContext") or {}
        ctx = container.spec.get("securityContext") or {}
        where = container.name
        assert pod.get("automountServiceAccountToken") is False, f"{where}: service-account token mounted"
        assert not (pod.get("hostNetwork") or pod.get("hostPID") or pod.get("hostIPC")), where
        assert (ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot"))) is True, f"{where}: may run as root"
        assert ctx.get("runAsUser", pod_ctx.get("runAsUser", 1)) != 0, where
        seccomp = ctx.get("seccompProfile") or pod_ctx.get("seccompProfile") or {}
        assert seccomp.get("type") == "RuntimeDefault", f"{where}: seccomp {seccomp}"
        assert ctx.get("allowPrivilegeEscalation") is False, f"{where}: privilege escalation allowed"
        assert ctx.get("readOnlyRootFilesystem") is True, f"{where}: writable root filesystem"
        assert not ctx.get("privileged"), where
        assert "ALL" in (ctx.get("capabilities") or {}).get("drop", []), f"{where}: capabilities not dropped"
        assert not (ctx.get("capabilities") or {}).get("add"), f"{where}: adds capabilities"
        volumes = {v["name"]: v for v in pod.get("volumes") or []}
        tmp = [m for m in container.spec.get("volumeMounts") or [] if m["mountPath"] == "/tmp"]
        assert tmp and "emptyDir" in volumes[tmp[0]["name"]], f"{where}: no emptyDir on /tmp"
    for account in overlay.of_kind("ServiceAccount"):
        assert account.get("automountServiceAccountToken") is False
    assert not overlay.of_kind("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding")


def _quantity(value: str | int) -> float:
    text = str(value)
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


def test_every_container_has_requests_and_limits(overlay: Rendered) -> None:
    for container in overlay.containers():
        resources = container.spec.get("resources") or {}
        for kind in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                assert resource in (resources.get(kind) or {}), f"{container.name} has no {resource} {kind}"
        for resource in ("cpu", "memory"):
            assert _quantity(resources["requests"][resource]) <= _quantity(resources["limits"][resource])


EXACT_TAG: Final = re.compile(
    r"^(v?\d+\.\d+(\.\d+)?([-.][A-Za-z0-9.]+)*|RELEASE\.\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}Z)$"
)


def test_every_image_is_pinned(overlay: Rendered) -> None:
    for container in overlay.containers():
        image = str(container.spec["image"])
        name, _, digest = image.partition("@")
        _repository, colon, tag = name.rpartition(":")
        if not colon or "/" in tag:  # no tag, or the colon was a registry port
            tag = ""
        assert (digest.startswith("sha256:") and len(digest) == 71) or EXACT_TAG.match(tag), (
            f"{container.name}: {image} is neither an exact version tag nor a digest"
        )
        assert container.spec.get("imagePullPolicy") in ("IfNotPresent", "Always"), container.name
    sources = [p for p in K8S.rglob("*.yaml") if "quay.io/minio" in p.read_text()]
    assert sources == [K8S / "overlays/dev/kustomization.yaml"], f"the MinIO image is named in {sources}"


def test_services_drain_before_they_are_killed(overlay: Rendered) -> None:
    for container in overlay.service_containers().values():
        grace = float(_value(container, "shutdown_grace_s"))
        pause = _sleep_seconds(container)
        period = container.pod_spec["terminationGracePeriodSeconds"]
        assert pause >= MIN_PRESTOP_S, f"{container.name}: preStop pause {pause} s is too short for endpoints"
        assert period >= pause + grace + TERMINATION_MARGIN_S, (
            f"{container.name}: terminationGracePeriodSeconds {period} < preStop {pause} + drain {grace} "
            f"+ {TERMINATION_MARGIN_S}"
        )


def test_namespace_enforces_restricted_pod_security(overlay: Rendered) -> None:
    (namespace,) = overlay.of_kind("Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for obj in overlay:
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == overlay.namespace, (
                f"{obj['kind']}/{obj['metadata']['name']}"
            )


# --------------------------------------------------------------------------- network policies


def _pods(overlay: Rendered) -> dict[str, dict[str, str]]:
    return {
        w["metadata"]["name"].removeprefix("switchboard-"): w["spec"]["template"]["metadata"]["labels"]
        for w in overlay.workloads()
    }


def test_network_policies_deny_by_default_and_allow_only_the_wiring(overlay: Rendered) -> None:
    policies = Policies(overlay)
    pods = _pods(overlay)
    pod = {name: policies.pod(labels) for name, labels in pods.items()}
    assert any(
        p["spec"]["podSelector"] == {}
        and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
        for p in policies.policies
    ), "no default-deny policy"
    dns = Peer({"k8s-app": "kube-dns"}, {"kubernetes.io/metadata.name": "kube-system"})
    for name, peer in pod.items():
        for protocol in ("UDP", "TCP"):
            assert policies.allows(peer, dns, 53, protocol), f"{name} cannot resolve names ({protocol})"

    services = overlay.service_containers()

    def port(caller: str, field: str) -> int:
        (ref,) = service_refs(str(_value(services[caller], field)), overlay)
        return overlay.backend(ref.service, ref.port)[1]

    agent_port, upload_port = port("edge", "agent_address"), port("edge", "upload_address")
    edge_port = int(_value(services["edge"], "edge_port"))
    controller = Peer(
        {"app.kubernetes.io/name": "ingress-nginx"}, {"kubernetes.io/metadata.name": "ingress-nginx"}
    )
    internal = Peer({"switchboard/grpc-client": "true"}, {"kubernetes.io/metadata.name": "billing"})
    stranger = Peer({"app": "other"}, {"kubernetes.io/metadata.name": "other"})
    prometheus = Peer({"app.kubernetes.io/name": "prometheus"}, {"kubernetes.io/metadata.name": "monitoring"})
    agent_metrics = listen_port(str(_value(services["agent"], "agent_metrics_listen")))[1]
    upload_metrics = listen_port(str(_value(services["upload"], "upload_metrics_listen")))[1]
    labelled_stranger = Peer({"switchboard/grpc-client": "true"}, {"kubernetes.io/metadata.name": "other"})
    allowed = [
        (controller, pod["edge"], edge_port),
        (pod["edge"], pod["agent"], agent_port),
        (pod["edge"], pod["upload"], upload_port),
        (pod["agent"], pod["upload"], port("agent", "upload_address")),
        (internal, pod["agent"], agent_port),
        (internal, pod["upload"], upload_port),
        (pod["agent"], Peer(ip="162.159.140.245"), 443),  # an LLM provider's public address
        (prometheus, pod["edge"], edge_port),
        (prometheus, pod["agent"], agent_metrics),
        (prometheus, pod["upload"], upload_metrics),
    ]
    denied = [
        (stranger, pod["edge"], edge_port),
        (stranger, pod["agent"], agent_port),
        (stranger, pod["agent"], agent_metrics),
        (stranger, pod["upload"], upload_metrics),
        (prometheus, pod["agent"], agent_port),
        (pod["upload"], pod["agent"], agent_port),
        (pod["agent"], pod["edge"], edge_port),
        (pod["edge"], Peer(ip="162.159.140.245"), 443),
        (pod["upload"], Peer(ip="162.159.140.245"), 443),
        (pod["agent"], Peer(ip="169.254.169.254"), 80),  # cloud metadata
        (pod["agent"], Peer(ip="169.254.169.254"), 443),
        (pod["agent"], Peer(ip="10.1.2.3"), 443),
    ]
    if overlay.overlay == "dev":
        allowed += [
            (pod["agent"], pod["postgres"], 5432),
            (pod["upload"], pod["postgres"], 5432),
            (pod["migrate"], pod["postgres"], 5432),
            (pod["upload"], pod["minio"], 9000),
            (pod["bucket"], pod["minio"], 9000),
        ]
        denied += [
            (pod["edge"], pod["postgres"], 5432),
            (pod["edge"], pod["minio"], 9000),
            (pod["agent"], pod["minio"], 9000),
            (stranger, pod["postgres"], 5432),
        ]
    else:
        # Production admits internal callers from named namespaces only: the label is not enough.
        denied += [
            (labelled_stranger, pod["agent"], agent_port),
            (labelled_stranger, pod["upload"], upload_port),
        ]
        minio_port = int(str(_value(services["upload"], "minio_endpoint")).rpartition(":")[2])
        database = [p for p in policies.policies if p["metadata"]["name"] == "switchboard-database-clients"]
        storage = [p for p in policies.policies if p["metadata"]["name"] == "switchboard-storage-clients"]
        (db_ip,) = [
            peer["ipBlock"]["cidr"].split("/")[0]
            for p in database
            for r in p["spec"]["egress"]
            for peer in r["to"]
        ]
        (s3_ip,) = [
            peer["ipBlock"]["cidr"].split("/")[0]
            for p in storage
            for r in p["spec"]["egress"]
            for peer in r["to"]
        ]
        allowed += [
            (pod["agent"], Peer(ip=db_ip), 5432),
            (pod["upload"], Peer(ip=db_ip), 5432),
            (pod["migrate"], Peer(ip=db_ip), 5432),
            (pod["upload"], Peer(ip=s3_ip), minio_port),
            (pod["bucket"], Peer(ip=s3_ip), minio_port),
        ]
        denied += [
            (pod["edge"], Peer(ip=db_ip), 5432),
            (pod["agent"], Peer(ip=s3_ip), minio_port),
        ]
    names = {id(peer): name for name, peer in pod.items()}
    for source, destination, number in allowed:
        assert policies.allows(source, destination, number), (
            f"blocked: {names.get(id(source), source)} -> {names.get(id(destination), destination)}:{number}"
        )
    for source, destination, number in denied:
        assert not policies.allows(source, destination, number), (
            f"allowed: {names.get(id(source), source)} -> {names.get(id(destination), destination)}:{number}"
        )


# --------------------------------------------------------------------------- overlays


def test_dev_runs_one_of_each_with_its_own_stores_and_the_offline_model(dev: Rendered) -> None:
    for deployment in dev.of_kind("Deployment"):
        assert deployment["spec"]["replicas"] == 1
    for name, mount in (("switchboard-postgres", "/var/lib/postgresql/data"), ("switchboard-minio", "/data")):
        statefulset = dev.get("StatefulSet", name)
        (claim,) = statefulset["spec"]["volumeClaimTemplates"]
        (container,) = statefulset["spec"]["template"]["spec"]["containers"]
        assert {"name": claim["metadata"]["name"], "mountPath": mount} in container["volumeMounts"]
    agent = dev.service_containers()["agent"]
    assert agent.env["LLM_PROVIDER"] == "local"
    assert not agent.external_secrets and "OPENAI_API_KEY" not in agent.env


def test_dev_secrets_are_labelled_dev_only_and_agree(dev: Rendered) -> None:
    for secret in dev.of_kind("Secret"):
        assert secret["metadata"]["labels"].get("switchboard/dev-only") == "true", secret["metadata"]["name"]
    for container in dev.containers():
        assert not container.external_secrets, f"{container.name}: {container.external_secrets} not rendered"
        for env in container.secret_vars:
            if not re.search(r"PASSWORD|SECRET|KEY|URL", env):
                continue  # user and database names
            value = container.env[env]
            assert "dev" in value.lower(), f"{container.name}: {env} does not look like a development value"
    postgres = dev.container("StatefulSet", "switchboard-postgres")
    url = urlsplit(dev.service_containers()["agent"].env["SWITCHBOARD_DATABASE_URL"])
    assert (url.username, url.password, url.path.lstrip("/")) == (
        postgres.env["POSTGRES_USER"],
        postgres.env["POSTGRES_PASSWORD"],
        postgres.env["POSTGRES_DB"],
    )
    minio = dev.container("StatefulSet", "switchboard-minio")
    upload = dev.service_containers()["upload"]
    assert (upload.env["MINIO_ACCESS_KEY"], upload.env["MINIO_SECRET_KEY"]) == (
        minio.env["MINIO_ROOT_USER"],
        minio.env["MINIO_ROOT_PASSWORD"],
    )


def test_production_commits_no_secret_values(production: Rendered) -> None:
    assert not production.of_kind("Secret"), "production Secrets are created out of band, never committed"
    for container in production.containers():
        assert container.secret_vars == container.external_secrets | {
            e for e in container.secret_vars if e in container.missing_optional
        }
    agent = production.service_containers()["agent"]
    provider = agent.env["LLM_PROVIDER"]
    assert provider != "local"
    assert f"{provider.upper()}_API_KEY" in agent.external_secrets, "the provider's key must be required"
    edge = production.service_containers()["edge"]
    assert "*" not in edge.env.get("SWITCHBOARD_CORS_ORIGINS", ""), "no wildcard CORS in production"


def test_production_scales_each_service_within_budgets(production: Rendered) -> None:
    deployments = {d["metadata"]["name"]: d for d in production.of_kind("Deployment")}
    hpas = {h["spec"]["scaleTargetRef"]["name"]: h for h in production.of_kind("HorizontalPodAutoscaler")}
    pdbs = production.of_kind("PodDisruptionBudget")
    assert set(hpas) == set(deployments)
    for name, deployment in deployments.items():
        assert "replicas" not in deployment["spec"], f"{name}: the autoscaler owns replicas"
        hpa = hpas[name]
        assert hpa["spec"]["scaleTargetRef"]["kind"] == "Deployment"
        assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        (pdb,) = [p for p in pdbs if selector_matches(p["spec"]["selector"], labels)]
        if "maxUnavailable" in pdb["spec"]:
            assert pdb["spec"]["maxUnavailable"] >= 1
        else:
            assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"], f"{name}: the PDB blocks drains"
        spread = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
        assert {c["topologyKey"] for c in spread} == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
        for constraint in spread:
            assert selector_matches(constraint["labelSelector"], labels)


def test_production_ingress_suits_server_sent_events_and_uploads(production: Rendered) -> None:
    (ingress,) = production.of_kind("Ingress")
    edge = production.service_containers()["edge"]
    annotations = ingress["metadata"]["annotations"]
    prefix = "nginx.ingress.kubernetes.io/"
    assert annotations[prefix + "proxy-buffering"] == "off"
    assert annotations[prefix + "proxy-request-buffering"] == "off"
    stream_timeout = float(_value(edge, "stream_timeout_s"))
    for timeout in ("proxy-read-timeout", "proxy-send-timeout"):
        assert int(annotations[prefix + timeout]) > stream_timeout, timeout
    body = annotations[prefix + "proxy-body-size"]
    assert body.endswith("m") and int(body[:-1]) * 2**20 > int(_value(edge, "upload_max_bytes"))
    hosts = {rule["host"] for rule in ingress["spec"]["rules"]}
    assert hosts <= {h for tls in ingress["spec"]["tls"] for h in tls["hosts"]}, "every host has TLS"
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            target, port = production.backend(
                backend["name"], backend["port"].get("name") or backend["port"]["number"]
            )
            assert target.service == "edge" and port == int(_value(edge, "edge_port"))
            for route in (edge_app.CHATKIT_PATH, edge_app.UPLOAD_PATH):
                assert route.startswith(path["path"]) and path["pathType"] == "Prefix"


def test_dockerfile_entrypoint_is_what_the_manifests_assume() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["switchboard"]' in text


def _annotated(obj: Obj) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


@pytest.mark.parametrize("kind", ["Deployment", "StatefulSet", "Job"])
def test_workloads_do_not_mount_service_links(overlay: Rendered, kind: str) -> None:
    """enableServiceLinks off: no SERVICE_HOST/PORT variables the code would have to ignore."""
    for workload in overlay.of_kind(kind):
        assert workload["spec"]["template"]["spec"].get("enableServiceLinks") is False, _annotated(workload)


def test_database_pools_fit_the_database_at_maximum_scale(production: Rendered) -> None:
    """The agents' pools (one per worker) and the upload services' (the limits store's, at most
    `MAX_POOL`) at the autoscalers' maximum, plus one connection per Job."""
    services = production.service_containers()

    def max_replicas(container: Container) -> int:
        (hpa,) = [
            h
            for h in production.of_kind("HorizontalPodAutoscaler")
            if h["spec"]["scaleTargetRef"]["name"] == container.workload["metadata"]["name"]
        ]
        return int(hpa["spec"]["maxReplicas"])

    agent, upload = services["agent"], services["upload"]
    per_agent = int(_value(agent, "agent_workers")) * (  # a pool per worker process
        int(_value(agent, "database_pool_size")) + int(_value(agent, "database_max_overflow"))
    )
    per_upload = min(int(_value(upload, "database_pool_size")), MAX_POOL.pool_size) + min(
        int(_value(upload, "database_max_overflow")), MAX_POOL.max_overflow
    )
    used = {
        "agents": max_replicas(agent) * per_agent,
        "uploads": max_replicas(upload) * per_upload,
        "jobs": len(production.of_kind("Job")),
    }
    assert sum(used.values()) <= DATABASE_CONNECTIONS, f"{used} exceed PostgreSQL's default limit"


# --------------------------------------------------------------------------- production identity


def _peers(policy: Obj) -> list[Obj]:
    spec = policy["spec"]
    return [
        peer
        for direction, side in (("ingress", "from"), ("egress", "to"))
        for rule in spec.get(direction) or []
        for peer in rule.get(side) or []
    ]


def test_production_admits_only_named_namespaces(production: Rendered) -> None:
    for policy in production.of_kind("NetworkPolicy"):
        for peer in _peers(policy):
            if "namespaceSelector" not in peer:
                continue
            selector = peer["namespaceSelector"] or {}
            name = policy["metadata"]["name"]
            assert selector, f"{name}: an empty namespaceSelector admits every namespace"
            labels = selector.get("matchLabels") or {}
            expressions = selector.get("matchExpressions") or []
            by_name = set(labels) == {"kubernetes.io/metadata.name"} and not expressions
            by_names = (
                not labels
                and len(expressions) == 1
                and expressions[0]["key"] == "kubernetes.io/metadata.name"
                and expressions[0]["operator"] == "In"
                and expressions[0]["values"]
            )
            assert by_name or by_names, f"{name}: namespaces must be named (kubernetes.io/metadata.name)"


def test_production_turns_grpc_reflection_off(production: Rendered) -> None:
    for service in ("agent", "upload"):
        container = production.service_containers()[service]
        value = container.env.get("SWITCHBOARD_GRPC_REFLECTION", "")
        assert value.lower() in ("false", "0", "no", "off"), f"{container.name}: reflection is on"


def test_production_has_no_shared_jwt_secret(production: Rendered) -> None:
    for container in production.containers():
        assert "SWITCHBOARD_JWT_SECRET" not in container.env, f"{container.name} has a shared JWT secret"
        assert "SWITCHBOARD_JWT_SECRET" not in container.secret_vars, container.name
    assert "switchboard-jwt" not in render_text("production"), "production still references the JWT Secret"
    for container in production.service_containers().values():
        issuer = container.env.get("SWITCHBOARD_OIDC_ISSUER") or container.env.get("SWITCHBOARD_JWKS_URL", "")
        assert issuer.startswith("https://"), f"{container.name}: tokens must come from an identity provider"
