"""The generated stubs match protos/ (regenerate with `make protos`), and buf lint is clean."""

from __future__ import annotations

import filecmp
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUF = "@bufbuild/buf@1.75.0"


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_protos.py"), str(tmp_path)], check=True)
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert generated, "protoc produced nothing"
    # switchboard/ also holds hand-written packages (app, demo): compare what protoc writes only.
    committed = sorted(
        p.relative_to(ROOT)
        for p in [ROOT / "switchboard" / "__init__.py", *(ROOT / "switchboard" / "v1").rglob("*")]
        if p.is_file() and "__pycache__" not in p.parts
    )
    assert [str(p) for p in generated] == [str(p) for p in committed]
    stale = [str(p) for p in generated if not filecmp.cmp(tmp_path / p, ROOT / p, shallow=False)]
    assert not stale, f"stale generated code, run `make protos`: {stale}"


def test_buf_lint_is_clean() -> None:
    npx = shutil.which("npx")
    assert npx, "npx (Node.js) is needed to run buf lint: install nodejs and npm"
    result = subprocess.run(
        [npx, "--yes", BUF, "lint"], cwd=ROOT / "protos", capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
