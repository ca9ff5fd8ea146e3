"""The layering contracts of pyproject.toml ([tool.importlinter]) hold, and they would catch a
forbidden import: each case copies the code to a scratch folder, adds one such import, and
`lint-imports` must report that contract broken."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(cwd: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    assert LINT_IMPORTS.exists(), f"{LINT_IMPORTS} is missing: install the dev extras (make test does)"
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_the_tree_keeps_every_contract() -> None:
    done = _lint(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 kept, 0 broken" in done.stdout, done.stdout


@pytest.mark.parametrize(
    ("module", "forbidden", "contract"),
    [
        ("switchboard/demo/actions.py", "services.common.config", "Apps import only the public app API"),
        ("helpdesk_app/articles.py", "services.agent_service.store", "Apps import only the public app API"),
        ("switchboard/app/_context.py", "services.common.ids", "The public app API stands on its own"),
        ("services/agent_service/conversation.py", "switchboard.demo.erp", "The core never imports an app"),
        (
            "services/edge/app.py",
            "services.agent_service.store",
            "The edge never imports the agent or upload service",
        ),
    ],
)
def test_a_forbidden_import_breaks_its_contract(
    tmp_path: Path, module: str, forbidden: str, contract: str
) -> None:
    shutil.copytree(ROOT / "services", tmp_path / "services", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(
        ROOT / "switchboard", tmp_path / "switchboard", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copytree(ROOT / "examples" / "helpdesk" / "helpdesk_app", tmp_path / "helpdesk_app")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / module
    target.write_text(target.read_text() + f"\nimport {forbidden}  # noqa\n")
    done = _lint(tmp_path, pythonpath=tmp_path)
    assert done.returncode != 0, done.stdout
    assert f"{contract} BROKEN" in done.stdout, done.stdout
