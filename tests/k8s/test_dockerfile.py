"""The Dockerfile and .dockerignore, checked without a container engine (none runs on CI machines).

Static lint: pinned base images, multi-stage with nothing to build or install with in the final
stage, a numeric non-root USER that the manifests run as, `switchboard` as ENTRYPOINT, the listen
ports exposed, no secrets baked in. Then the build stage is rehearsed: the wheel that `pip install .`
builds is built from exactly the files .dockerignore lets into the context, and must hold the
console script, the generated stubs and the package data.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest

from services.common.config import Settings
from tests.k8s.manifests import ROOT, Rendered, field_default, listen_port, setting_aliases

DOCKERFILE: Final = ROOT / "Dockerfile"
DOCKERIGNORE: Final = ROOT / ".dockerignore"
BUILD_TOOLS: Final = re.compile(
    r"\b(apt-get|apt|apk|dnf|yum|gcc|g\+\+|cc|clang|make|build-essential|cargo|rustc|git|curl|wget)\b"
)
PINNED_TAG: Final = re.compile(r"^\d+\.\d+\.\d+[-.A-Za-z0-9]*$")
DIGEST: Final = re.compile(r"^sha256:[0-9a-f]{64}$")


@dataclass(frozen=True)
class Instruction:
    keyword: str
    value: str
    line: int


def parse(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped."""
    instructions: list[Instruction] = []
    pending = ""
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = pending + line
        pending = ""
        keyword, _, value = full.partition(" ")
        instructions.append(Instruction(keyword.upper(), value.strip(), start))
    assert not pending, "the Dockerfile ends inside a continued line"
    return instructions


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    result: list[list[Instruction]] = []
    for instruction in instructions:
        if instruction.keyword == "FROM":
            result.append([])
        if result:
            result[-1].append(instruction)
    return result


def _from(stage: list[Instruction]) -> tuple[str, str | None]:
    words = stage[0].value.split()
    words = [w for w in words if not w.startswith("--platform")]
    alias = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
    return words[0], alias


def _env(stage: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in stage:
        if instruction.keyword == "ENV":
            for match in re.finditer(r"([A-Za-z_][A-Za-z0-9_]*)=(\S*)", instruction.value):
                env[match.group(1)] = match.group(2)
    return env


@pytest.fixture(scope="module")
def dockerfile() -> list[list[Instruction]]:
    return stages(parse(DOCKERFILE.read_text()))


@pytest.fixture(scope="module")
def final(dockerfile: list[list[Instruction]]) -> list[Instruction]:
    return dockerfile[-1]


def test_base_images_are_pinned_and_shared(dockerfile: list[list[Instruction]]) -> None:
    aliases: set[str] = set()
    external = set()
    for stage in dockerfile:
        image, alias = _from(stage)
        if image not in aliases:
            name, _, digest = image.partition("@")
            repository, _, tag = name.rpartition(":")
            assert repository and (PINNED_TAG.match(tag) or DIGEST.match(digest)), (
                f"line {stage[0].line}: FROM {image} is not pinned to an exact version or a digest"
            )
            assert "slim" in tag, f"line {stage[0].line}: use a slim base image"
            external.add(image)
        if alias:
            aliases.add(alias)
    assert len(external) == 1, f"build and runtime stages should share one base image: {external}"
    assert len(dockerfile) >= 2, "multi-stage: build in one stage, run in another"


def test_final_stage_runs_as_the_non_root_user_of_the_manifests(
    final: list[Instruction], dev: Rendered, production: Rendered
) -> None:
    users = [i.value for i in final if i.keyword == "USER"]
    assert users, "the final stage has no USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0, f"USER {users[-1]} must be a numeric non-root uid"
    assert gid.isdigit() and int(gid) != 0
    for rendered in (dev, production):
        for container in rendered.containers():
            if container.is_switchboard:
                ctx = {
                    **(container.pod_spec.get("securityContext") or {}),
                    **(container.spec.get("securityContext") or {}),
                }
                assert (ctx.get("runAsUser"), ctx.get("runAsGroup")) == (int(uid), int(gid)), container.name


def test_entrypoint_is_the_switchboard_command(final: list[Instruction]) -> None:
    (entrypoint,) = [i for i in final if i.keyword == "ENTRYPOINT"]
    assert json.loads(entrypoint.value) == ["switchboard"], "exec form, the console script, nothing else"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["switchboard"] == "services.cli:main"
    env = _env(final)
    assert env["PATH"].split(":")[0].endswith("/bin"), "the virtual environment's bin comes first on PATH"


def test_final_stage_has_nothing_to_build_or_install_with(final: list[Instruction]) -> None:
    for instruction in final:
        if instruction.keyword == "RUN":
            assert not BUILD_TOOLS.search(instruction.value), f"line {instruction.line}: {instruction.value}"
            assert "pip install" not in instruction.value, (
                f"line {instruction.line}: installs in the final stage"
            )
        if instruction.keyword in ("COPY", "ADD"):
            assert instruction.keyword == "COPY" and "--from=" in instruction.value, (
                f"line {instruction.line}: the final stage copies only built artefacts from the build stage"
            )
    runs = " ".join(i.value for i in final if i.keyword == "RUN")
    assert "pip uninstall" in runs and "pip" in runs.split("pip uninstall", 1)[1], (
        "the base image's pip stays"
    )


def test_build_stage_venv_has_no_installer(dockerfile: list[list[Instruction]]) -> None:
    runs = " ".join(i.value for stage in dockerfile[:-1] for i in stage if i.keyword == "RUN")
    assert "venv --without-pip" in runs
    assert "--python" in runs, "the base image's pip installs into the virtual environment"


def test_runtime_environment_suits_a_read_only_root(final: list[Instruction]) -> None:
    env = _env(final)
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1", "no .pyc writes on a read-only root filesystem"
    assert env.get("PYTHONUNBUFFERED") == "1", "logs reach kubectl logs at once"
    aliases = setting_aliases()
    for name in env:
        assert not re.search(r"SECRET|PASSWORD|TOKEN|API_KEY|ACCESS_KEY", name), f"ENV {name} in the image"
        if name.startswith(("SWITCHBOARD_", "MINIO_", "OPENAI_", "GEMINI_", "LLM_")):
            assert name in aliases, f"ENV {name} is not a setting"
    for instruction in final:
        if instruction.keyword == "ARG":
            assert not re.search(r"SECRET|PASSWORD|TOKEN|KEY", instruction.value), instruction.value


def test_exposed_ports_are_the_services_default_ports(final: list[Instruction]) -> None:
    exposed = {int(p.split("/")[0]) for i in final if i.keyword == "EXPOSE" for p in i.value.split()}
    defaults = {
        int(field_default("edge_port")),
        listen_port(str(field_default("agent_listen")))[1],
        listen_port(str(field_default("upload_listen")))[1],
    }
    assert exposed == defaults
    assert set(Settings.model_fields) >= {"edge_port", "agent_listen", "upload_listen"}


# --------------------------------------------------------------------------- build context


def _pattern(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go filepath.Match plus `**`) as a regex over slash paths."""
    pattern = pattern.strip("/")
    out = ""
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
            continue
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
            continue
        if char == "*":
            out += "[^/]*"
        elif char == "?":
            out += "[^/]"
        elif char == "[":
            end = pattern.index("]", i)
            out += pattern[i : end + 1]  # a character class, same syntax in Go and in re
            i = end
        else:
            out += re.escape(char)
        i += 1
    return re.compile(f"^{out}$")


def dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        rules.append((negate, _pattern(line.lstrip("!"))))
    return rules


def ignored(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern matches a path or any parent."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for negate, regex in rules:
        if any(regex.match(prefix) for prefix in prefixes):
            result = not negate
    return result


def context_files() -> Iterator[Path]:
    rules = dockerignore_rules()
    stack = [ROOT]
    while stack:
        directory = stack.pop()
        for entry in directory.iterdir():
            relative = entry.relative_to(ROOT).as_posix()
            if entry.is_dir():
                # Pruning an ignored directory is exact here: no exception reaches inside one.
                if not ignored(relative, rules):
                    stack.append(entry)
            elif not ignored(relative, rules):
                yield entry


def test_dockerignore_keeps_local_state_and_tooling_out() -> None:
    rules = dockerignore_rules()
    for path in (
        ".git/HEAD",
        ".venv/bin/python",
        "var/jwt-secret",
        "var/switchboard.sqlite3",
        "tests/e2e/conftest.py",
        "k8s/base/kustomization.yaml",
        "benchmarks/README.md",
        "services/__pycache__/cli.cpython-311.pyc",
        "services/edge/__pycache__/app.cpython-311.pyc",
        ".ci/run",
        "Dockerfile",
    ):
        assert ignored(path, rules), f"{path} would be sent to the build context"


def test_dockerignore_lets_in_everything_the_build_copies(dockerfile: list[list[Instruction]]) -> None:
    rules = dockerignore_rules()
    for stage in dockerfile:
        for instruction in stage:
            if instruction.keyword != "COPY" or "--from=" in instruction.value:
                continue
            *sources, _ = instruction.value.split()
            for source in sources:
                path = ROOT / source
                assert path.exists(), f"line {instruction.line}: COPY {source}: no such file"
                files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
                kept = [p for p in files if not ignored(p.relative_to(ROOT).as_posix(), rules)]
                assert kept, f"line {instruction.line}: .dockerignore excludes all of {source}"


def test_build_stage_builds_a_complete_wheel_from_the_context(tmp_path: Path) -> None:
    """What `pip install .` builds in the image, built from the files the context holds."""
    context = tmp_path / "context"
    for path in context_files():
        target = context / path.relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    top = sorted(p.name for p in context.iterdir())
    assert top == ["README.md", "pyproject.toml", "services", "switchboard"], top
    out = tmp_path / "wheel"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--quiet",
            "-w",
            str(out),
            str(context),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = out.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        scripts = archive.read(entry_points).decode()
    for required in (
        "services/cli.py",
        "services/edge/demo.html",
        "switchboard/v1/chat_pb2.py",
        "switchboard/v1/upload_pb2_grpc.py",
    ):
        assert required in names, f"the image would lack {required}"
    packaged = {n for n in names if n.startswith("services/") and not n.endswith("/")}
    source = {
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "services").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert source - packaged == set(), f"not in the wheel: {sorted(source - packaged)}"
    assert "switchboard = services.cli:main" in scripts
    assert not any(n.startswith(("tests/", "k8s/", "benchmarks/")) for n in names)
