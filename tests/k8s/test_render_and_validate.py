"""Each overlay renders with `kubectl kustomize`, and every object validates strictly against the
Kubernetes API schemas of the oldest supported version (1.29) and the newest that
kubernetes-validate bundles."""

from __future__ import annotations

import copy
from typing import Final

import kubernetes_validate  # type: ignore[import-untyped]
import pytest

from tests.k8s.manifests import Rendered, render_text

OLDEST: Final = "1.29"
NEWEST: Final = kubernetes_validate.latest_version()
VERSIONS: Final = (OLDEST, NEWEST)


def test_overlay_renders(overlay: Rendered) -> None:
    assert render_text(overlay.overlay).strip(), f"k8s/overlays/{overlay.overlay} rendered nothing"
    kinds = {obj["kind"] for obj in overlay}
    assert {"Namespace", "Deployment", "Service", "ConfigMap", "Job", "NetworkPolicy"} <= kinds


@pytest.mark.parametrize("version", VERSIONS)
def test_every_object_validates_strictly(overlay: Rendered, version: str) -> None:
    failures = []
    for obj in overlay:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            failures.append(f"{obj['kind']}/{obj['metadata']['name']}: {error.message} at {list(error.path)}")
    assert not failures, f"{overlay.overlay} overlay against Kubernetes {version}:\n" + "\n".join(failures)


def test_strict_validation_catches_unknown_fields(dev: Rendered) -> None:
    """The validator is really strict: a misspelt field in a pod template fails."""
    deployment = copy.deepcopy(dev.get("Deployment", "switchboard-agent"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"grpc": {"port": 50051}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, OLDEST, strict=True)
