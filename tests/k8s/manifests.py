"""Render the kustomize overlays and read the rendered objects the way Kubernetes reads them.

Everything the k8s tests know about the manifests comes from `kubectl kustomize` output, and
everything they know about the code comes from the code: the recognised environment variables are
`Settings.model_fields`' validation aliases, and which settings a service reads is found by walking
its modules' syntax trees for `settings.<field>` (see `settings_read_by`).
"""

from __future__ import annotations

import ast
import base64
import functools
import ipaddress
import re
import shutil
import subprocess
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml
from pydantic import AliasChoices

from services.common.config import Settings

ROOT: Final = Path(__file__).resolve().parents[2]
K8S: Final = ROOT / "k8s"
OVERLAYS: Final = ("dev", "production")
SWITCHBOARD_IMAGE: Final = "switchboard"
"""The placeholder image name of the base; overlays name the real image."""

KUBECTL_MISSING: Final = (
    "kubectl was not found on the PATH. The Kubernetes tests render k8s/overlays/* with "
    "`kubectl kustomize` (offline, no cluster needed) and are never skipped: install kubectl >= 1.27, "
    "which embeds kustomize 5 (Debian 12's kubernetes-client package is 1.20: too old), and run them again."
)

Obj = dict[str, Any]

# The services, by the `switchboard` subcommand their Deployment runs, and the package that holds
# their code (the settings they read are found there, in services/common and in cli.py's runner).
SERVICES: Final = {
    "agent": "services/agent_service",
    "upload": "services/upload_service",
    "edge": "services/edge",
}
WORKLOAD_KINDS: Final = ("Deployment", "StatefulSet", "Job")


class RenderError(RuntimeError):
    pass


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        raise RenderError(KUBECTL_MISSING)
    return path


@functools.cache
def render_text(overlay: str) -> str:
    """`kubectl kustomize k8s/overlays/<overlay>` (cached: the tests only read it)."""
    result = subprocess.run(
        [kubectl(), "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        raise RenderError(f"kubectl kustomize k8s/overlays/{overlay} failed:\n{result.stderr}")
    return result.stdout


def render(overlay: str) -> Rendered:
    documents = [doc for doc in yaml.safe_load_all(render_text(overlay)) if doc]
    return Rendered(overlay, documents)


# --------------------------------------------------------------------------- label selectors


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A LabelSelector (matchLabels and matchExpressions) against a label set; {} matches all."""
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values") or []
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and labels.get(key) in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


# --------------------------------------------------------------------------- rendered objects


@dataclass
class Container:
    """A container of a workload, with its environment resolved from ConfigMaps and Secrets."""

    workload: Obj
    pod_spec: Obj
    spec: Obj
    env: dict[str, str]
    secret_vars: set[str]
    """Variables whose value comes from a Secret (secretKeyRef or a secretRef in envFrom)."""
    missing_optional: set[str] = field(default_factory=set)
    """Optional secretKeyRefs whose Secret or key is absent from the rendered objects."""
    external_secrets: set[str] = field(default_factory=set)
    """Required secretKeyRefs to Secrets that are not rendered (created out of band, production)."""

    @property
    def kind(self) -> str:
        return str(self.workload["kind"])

    @property
    def name(self) -> str:
        return f"{self.workload['kind']}/{self.workload['metadata']['name']}:{self.spec['name']}"

    @property
    def pod_labels(self) -> dict[str, str]:
        return dict(self.workload["spec"]["template"]["metadata"].get("labels") or {})

    @property
    def is_switchboard(self) -> bool:
        image = str(self.spec["image"])
        return image.split("@")[0].rsplit(":", 1)[0].rsplit("/", 1)[-1] == SWITCHBOARD_IMAGE

    @property
    def service(self) -> str | None:
        """The `switchboard` subcommand this container runs as a long-lived service, if any."""
        args = list(self.spec.get("args") or [])
        if self.spec.get("command") or not args:
            return None
        return args[0] if args[0] in SERVICES else None

    def container_port(self, name_or_number: str | int) -> int | None:
        for port in self.spec.get("ports") or []:
            if name_or_number in (port.get("name"), port["containerPort"]):
                return int(port["containerPort"])
        return None


class Rendered:
    """The objects of one rendered overlay, with the lookups the tests need."""

    def __init__(self, overlay: str, objects: list[Obj]) -> None:
        self.overlay = overlay
        self.objects = objects

    def __iter__(self) -> Iterator[Obj]:
        return iter(self.objects)

    def of_kind(self, *kinds: str) -> list[Obj]:
        return [obj for obj in self.objects if obj["kind"] in kinds]

    def get(self, kind: str, name: str) -> Obj:
        for obj in self.of_kind(kind):
            if obj["metadata"]["name"] == name:
                return obj
        raise KeyError(f"{kind}/{name} is not in the {self.overlay} overlay")

    def find(self, kind: str, name: str) -> Obj | None:
        try:
            return self.get(kind, name)
        except KeyError:
            return None

    @property
    def namespace(self) -> str:
        (namespace,) = self.of_kind("Namespace")
        return str(namespace["metadata"]["name"])

    def workloads(self) -> list[Obj]:
        return self.of_kind(*WORKLOAD_KINDS)

    def config_map(self, name: str) -> dict[str, str] | None:
        obj = self.find("ConfigMap", name)
        return None if obj is None else {k: str(v) for k, v in (obj.get("data") or {}).items()}

    def secret(self, name: str) -> dict[str, str] | None:
        obj = self.find("Secret", name)
        if obj is None:
            return None
        values = {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}
        values.update({k: str(v) for k, v in (obj.get("stringData") or {}).items()})
        return values

    def containers(self, *, init: bool = True) -> list[Container]:
        result = []
        for workload in self.workloads():
            pod_spec = workload["spec"]["template"]["spec"]
            specs = list(pod_spec.get("containers") or [])
            if init:
                specs += list(pod_spec.get("initContainers") or [])
            for spec in specs:
                result.append(self._container(workload, pod_spec, spec))
        return result

    def container(self, kind: str, name: str) -> Container:
        workload = self.get(kind, name)
        pod_spec = workload["spec"]["template"]["spec"]
        (spec,) = pod_spec["containers"]
        return self._container(workload, pod_spec, spec)

    def init_containers(self, kind: str, name: str) -> list[Container]:
        workload = self.get(kind, name)
        pod_spec = workload["spec"]["template"]["spec"]
        return [self._container(workload, pod_spec, spec) for spec in pod_spec.get("initContainers") or []]

    def service_containers(self) -> dict[str, Container]:
        """The Switchboard service containers, by service (agent, upload, edge)."""
        found: dict[str, Container] = {}
        for container in self.containers(init=False):
            if container.kind == "Deployment" and container.service is not None:
                assert container.service not in found, f"two Deployments run {container.service}"
                found[container.service] = container
        return found

    def _container(self, workload: Obj, pod_spec: Obj, spec: Obj) -> Container:
        """The environment Kubernetes gives the container: envFrom in order, then env (which wins),
        `$(VAR)` references expanded; optional references to absent Secrets or keys are skipped."""
        env: dict[str, str] = {}
        secret_vars: set[str] = set()
        missing: set[str] = set()
        external: set[str] = set()
        for source in spec.get("envFrom") or []:
            prefix = source.get("prefix", "")
            if "configMapRef" in source:
                ref = source["configMapRef"]
                data = self.config_map(ref["name"])
                is_secret = False
            else:
                ref = source["secretRef"]
                data = self.secret(ref["name"])
                is_secret = True
            if data is None:
                if ref.get("optional"):
                    continue
                raise KeyError(f"{workload['metadata']['name']}: envFrom {ref['name']} does not exist")
            for key, value in data.items():
                env[prefix + key] = value
                if is_secret:
                    secret_vars.add(prefix + key)
                else:
                    secret_vars.discard(prefix + key)
        for item in spec.get("env") or []:
            name = item["name"]
            if "value" in item:
                env[name] = _expand(str(item["value"]), env)
                secret_vars.discard(name)
                continue
            value_from = item["valueFrom"]
            if "secretKeyRef" in value_from:
                ref = value_from["secretKeyRef"]
                data = self.secret(ref["name"])
                is_secret = True
            elif "configMapKeyRef" in value_from:
                ref = value_from["configMapKeyRef"]
                data = self.config_map(ref["name"])
                is_secret = False
            else:  # fieldRef / resourceFieldRef: not used by these manifests
                raise AssertionError(f"{name}: unsupported valueFrom {value_from}")
            if data is None or ref["key"] not in data:
                # A Secret created out of band (production) still names the variable.
                if ref.get("optional"):
                    missing.add(name)
                    continue
                if data is None and is_secret:
                    env[name] = ""
                    secret_vars.add(name)
                    external.add(name)
                    continue
                raise KeyError(f"{workload['metadata']['name']}: {ref} does not exist")
            env[name] = data[ref["key"]]
            if is_secret:
                secret_vars.add(name)
            else:
                secret_vars.discard(name)
        return Container(workload, pod_spec, spec, env, secret_vars, missing, external)

    # ----------------------------------------------------------------- Services

    def services_selecting(self, pod_labels: Mapping[str, str]) -> list[Obj]:
        return [
            svc
            for svc in self.of_kind("Service")
            if svc["spec"].get("selector")
            and selector_matches({"matchLabels": svc["spec"]["selector"]}, pod_labels)
        ]

    def backend(self, service_name: str, port: int | str) -> tuple[Container, int]:
        """The container and containerPort that `service_name:port` reaches (port: number or name)."""
        svc = self.get("Service", service_name)
        for service_port in svc["spec"]["ports"]:
            if port in (service_port["port"], service_port.get("name")):
                target = service_port.get("targetPort", service_port["port"])
                break
        else:
            raise KeyError(f"Service {service_name} has no port {port}")
        selector = {"matchLabels": svc["spec"]["selector"]}
        for container in self.containers(init=False):
            if container.kind == "Job" or not selector_matches(selector, container.pod_labels):
                continue
            number = container.container_port(target)
            if number is not None:
                return container, number
        raise KeyError(f"Service {service_name} port {port} (targetPort {target}) reaches no container port")


def _expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion ($$ escapes); unknown references stay as they are."""
    return re.sub(
        r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
        lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)),
        value,
    )


# --------------------------------------------------------------------------- addresses


@dataclass(frozen=True)
class ServiceRef:
    """A reference to an in-cluster Service inside a setting's value (`name[.ns[.svc...]]:port`)."""

    service: str
    port: int
    start: int
    end: int


_HOST_PORT: Final = re.compile(
    r"(?<![A-Za-z0-9.-])([a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9-]+)*):(\d{1,5})\b"
)


def service_refs(value: str, rendered: Rendered) -> list[ServiceRef]:
    """Every `host:port` in `value` whose host is one of the overlay's Services, by its short name,
    `name.namespace`, `name.namespace.svc` or `name.namespace.svc.cluster.local`."""
    services = {svc["metadata"]["name"] for svc in rendered.of_kind("Service")}
    namespace = rendered.namespace
    refs = []
    for match in _HOST_PORT.finditer(value):
        host = match.group(1)
        name, _, rest = host.partition(".")
        if name not in services or rest not in (
            "",
            namespace,
            f"{namespace}.svc",
            f"{namespace}.svc.cluster.local",
        ):
            continue
        refs.append(ServiceRef(name, int(match.group(4)), match.start(1), match.end(4)))
    return refs


def listen_port(value: str) -> tuple[str, int]:
    """`host:port` of a listen setting (`0.0.0.0:50051`, `[::]:50051`)."""
    host, _, port = value.rpartition(":")
    return host, int(port)


WILDCARD_HOSTS: Final = ("0.0.0.0", "[::]", "::", "")


# --------------------------------------------------------------------------- settings and the code


def setting_aliases() -> dict[str, str]:
    """Environment variable -> Settings field, from the fields' validation aliases."""
    aliases: dict[str, str] = {}
    for name, info in Settings.model_fields.items():
        alias = info.validation_alias
        if isinstance(alias, AliasChoices):
            for choice in alias.choices:
                if isinstance(choice, str):
                    aliases[choice] = name
        elif isinstance(alias, str):
            aliases[alias] = name
        else:
            aliases[(info.alias or name).upper()] = name
    return aliases


def field_default(name: str) -> Any:
    info = Settings.model_fields[name]
    return info.get_default(call_default_factory=True)


@functools.cache
def _settings_members() -> dict[str, frozenset[str]]:
    """Settings' properties and methods -> the fields they read (`self.<field>`), transitively."""
    tree = ast.parse((ROOT / "services/common/config.py").read_text())
    (cls,) = [node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "Settings"]
    direct: dict[str, set[str]] = {}
    for node in cls.body:
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
            direct[node.name] = {
                sub.attr
                for sub in ast.walk(node)
                if isinstance(sub, ast.Attribute)
                and isinstance(sub.value, ast.Name)
                and sub.value.id == "self"
            }
    fields = set(Settings.model_fields)
    resolved: dict[str, frozenset[str]] = {}

    def resolve(member: str, seen: frozenset[str]) -> set[str]:
        result = set()
        for attr in direct.get(member, set()):
            if attr in fields:
                result.add(attr)
            elif attr in direct and attr not in seen:
                result |= resolve(attr, seen | {attr})
        return result

    for member in direct:
        resolved[member] = frozenset(resolve(member, frozenset({member})))
    return resolved


def _is_settings_expr(node: ast.expr) -> bool:
    if isinstance(node, ast.Name):
        return "settings" in node.id
    if isinstance(node, ast.Attribute):
        return "settings" in node.attr
    return False


def _settings_reads(paths: Iterable[Path], functions: frozenset[str] | None = None) -> set[str]:
    fields = set(Settings.model_fields)
    members = _settings_members()
    found: set[str] = set()
    for path in paths:
        tree = ast.parse(path.read_text())
        scopes: list[ast.AST] = [tree]
        if functions is not None:
            scopes = [
                node
                for node in ast.walk(tree)
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name in functions
            ]
        for scope in scopes:
            for node in ast.walk(scope):
                if isinstance(node, ast.Attribute) and _is_settings_expr(node.value):
                    if node.attr in fields:
                        found.add(node.attr)
                    elif node.attr in members:
                        found |= members[node.attr]
    return found


@functools.cache
def settings_read_by(service: str) -> frozenset[str]:
    """The Settings fields a service's code reads: its package, services/common, and cli.py's
    logging setup and `_run_<service>` runner."""
    package = ROOT / SERVICES[service]
    paths = [*package.rglob("*.py"), *(ROOT / "services/common").rglob("*.py")]
    found = _settings_reads(paths)
    found |= _settings_reads([ROOT / "services/cli.py"], frozenset({"_configure_logging", f"_run_{service}"}))
    return frozenset(found)


# --------------------------------------------------------------------------- network policies


@dataclass(frozen=True)
class Peer:
    """One end of a connection: a pod (labels, namespace labels) or an address outside the cluster."""

    labels: Mapping[str, str] = field(default_factory=dict)
    namespace_labels: Mapping[str, str] = field(default_factory=dict)
    ip: str | None = None

    @property
    def is_pod(self) -> bool:
        return self.ip is None


def _peer_matches(rule_peer: Obj, peer: Peer, own_namespace: Mapping[str, str]) -> bool:
    if "ipBlock" in rule_peer:
        if peer.ip is None:
            return False
        address = ipaddress.ip_address(peer.ip)
        block = rule_peer["ipBlock"]
        if address not in ipaddress.ip_network(block["cidr"]):
            return False
        return not any(address in ipaddress.ip_network(cidr) for cidr in block.get("except") or [])
    if not peer.is_pod:
        return False
    if "namespaceSelector" in rule_peer:
        if not selector_matches(rule_peer["namespaceSelector"], peer.namespace_labels):
            return False
    elif dict(peer.namespace_labels) != dict(own_namespace):
        return False
    if "podSelector" in rule_peer:
        return selector_matches(rule_peer["podSelector"], peer.labels)
    return True


def _port_matches(rule: Obj, port: int, protocol: str) -> bool:
    ports = rule.get("ports")
    if not ports:
        return True
    for item in ports:
        if item.get("protocol", "TCP") != protocol:
            continue
        if "port" not in item:
            return True
        low = int(item["port"])
        high = int(item.get("endPort", low))
        if low <= port <= high:
            return True
    return False


class Policies:
    """NetworkPolicy semantics for one namespace: a connection needs its source's egress and its
    destination's ingress to allow it (a side selected by no policy of that type is not isolated)."""

    def __init__(self, rendered: Rendered) -> None:
        self.policies = rendered.of_kind("NetworkPolicy")
        self.namespace = {"kubernetes.io/metadata.name": rendered.namespace}

    def pod(self, labels: Mapping[str, str]) -> Peer:
        return Peer(labels, self.namespace)

    def _side(self, pod: Peer, direction: str, other: Peer, port: int, protocol: str) -> bool:
        kind = "Ingress" if direction == "ingress" else "Egress"
        selecting = [
            policy
            for policy in self.policies
            if selector_matches(policy["spec"]["podSelector"], pod.labels)
            and kind in policy["spec"].get("policyTypes", ["Ingress"])
        ]
        if not selecting:
            return True
        key = "from" if direction == "ingress" else "to"
        for policy in selecting:
            for rule in policy["spec"].get(direction) or []:
                peers = rule.get(key)
                peer_ok = not peers or any(_peer_matches(p, other, self.namespace) for p in peers)
                if peer_ok and _port_matches(rule, port, protocol):
                    return True
        return False

    def allows(self, source: Peer, destination: Peer, port: int, protocol: str = "TCP") -> bool:
        local = self.namespace
        if source.is_pod and dict(source.namespace_labels) == local:
            allowed = self._side(source, "egress", destination, port, protocol)
            if not allowed:
                return False
        if destination.is_pod and dict(destination.namespace_labels) == local:
            return self._side(destination, "ingress", source, port, protocol)
        return True
