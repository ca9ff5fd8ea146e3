"""checkov over both rendered overlays and the Dockerfile: every finding is an accepted exception
listed, with its reason, in k8s/SECURITY-EXCEPTIONS.md, and every listed exception still occurs
(a fixed finding must leave the list)."""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest

from tests.k8s.checkov_env import ensure_checkov
from tests.k8s.manifests import K8S, OVERLAYS, ROOT, render_text

EXCEPTIONS: Final = K8S / "SECURITY-EXCEPTIONS.md"

pytestmark = pytest.mark.timeout(900)  # the first run creates checkov's environment (about a minute)


@dataclass(frozen=True)
class Finding:
    check: str
    target: str
    """`dev`, `production` or `Dockerfile`."""
    resource: str
    """`Kind/name` for Kubernetes objects, `Dockerfile` for the Dockerfile."""
    title: str


@dataclass(frozen=True)
class Exception_:
    check: str
    targets: tuple[str, ...]
    resources: tuple[str, ...]
    reason: str

    def covers(self, finding: Finding) -> bool:
        return (
            finding.check == self.check
            and finding.target in self.targets
            and any(fnmatch.fnmatchcase(finding.resource, pattern) for pattern in self.resources)
        )


def accepted() -> list[Exception_]:
    """The rows of the table in SECURITY-EXCEPTIONS.md: | check | where | resources | reason |."""
    rows = []
    for line in EXCEPTIONS.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not re.fullmatch(r"CKV_[A-Z0-9_]+", cells[0].strip("`")):
            continue
        check, where, resources, reason = cells
        assert len(reason) > 40, f"{check}: give the reason, not a label"
        rows.append(
            Exception_(
                check.strip("`"),
                tuple(t.strip().strip("`") for t in where.split(",")),
                tuple(r.strip().strip("`") for r in resources.split(",")),
                reason,
            )
        )
    return rows


def _reports(output: str) -> list[dict[str, Any]]:
    data = json.loads(output)
    return data if isinstance(data, list) else [data]


@dataclass(frozen=True)
class Scan:
    findings: list[Finding]
    resources: dict[str, int]
    """Resources checkov read, by framework."""


def scan(directory: Path) -> Scan:
    executable = ensure_checkov()
    result = subprocess.run(
        [
            str(executable),
            "--directory",
            str(directory),
            "--framework",
            "kubernetes",
            "dockerfile",
            "--skip-download",
            "--quiet",
            "--compact",
            "--output",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=directory,
    )
    assert result.returncode in (0, 1), f"checkov failed ({result.returncode}):\n{result.stderr[-4000:]}"
    findings = []
    resources = {}
    for report in _reports(result.stdout):
        assert report["summary"]["parsing_errors"] == 0, report["summary"]
        resources[report["check_type"]] = int(report["summary"]["resource_count"])
        for check in report["results"]["failed_checks"]:
            target = Path(check["file_path"]).stem
            if report["check_type"] == "dockerfile":
                target, resource = "Dockerfile", "Dockerfile"
            else:
                kind, _namespace, name = check["resource"].split(".", 2)
                resource = f"{kind}/{name}"
            findings.append(Finding(check["check_id"], target, resource, check["check_name"]))
    return Scan(findings, resources)


@pytest.fixture(scope="module")
def checkov(tmp_path_factory: pytest.TempPathFactory) -> Scan:
    directory = tmp_path_factory.mktemp("checkov")
    for overlay in OVERLAYS:
        (directory / f"{overlay}.yaml").write_text(render_text(overlay))
    shutil.copy(ROOT / "Dockerfile", directory / "Dockerfile")
    return scan(directory)


@pytest.fixture(scope="module")
def findings(checkov: Scan) -> list[Finding]:
    return checkov.findings


def test_scan_read_both_overlays_and_the_dockerfile(checkov: Scan) -> None:
    # A scan that silently read nothing would pass the tests below.
    expected = sum(len([d for d in render_text(o).split("\n---\n") if d.strip()]) for o in OVERLAYS)
    assert checkov.resources.get("kubernetes", 0) >= expected * 0.9, (checkov.resources, expected)
    assert checkov.resources.get("dockerfile") == 1, checkov.resources


def test_every_finding_is_an_accepted_exception(findings: list[Finding]) -> None:
    exceptions = accepted()
    unexplained = [f for f in findings if not any(e.covers(f) for e in exceptions)]
    assert not unexplained, "findings without an entry in k8s/SECURITY-EXCEPTIONS.md:\n" + "\n".join(
        f"{f.check} {f.target} {f.resource}: {f.title}" for f in unexplained
    )


def test_every_accepted_exception_still_occurs(findings: list[Finding]) -> None:
    stale = [e for e in accepted() if not any(e.covers(f) for f in findings)]
    assert not stale, "exceptions that no longer occur (remove them): " + ", ".join(e.check for e in stale)
