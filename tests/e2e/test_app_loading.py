"""A broken SWITCHBOARD_APP stops the agent service at start: exit status 2 and one log line that
names the variable and says what is wrong, no traceback, nothing served."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.processes import ROOT, free_port, service_env
from tests.support.s3 import S3Server


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("no_such_package_xyz.app:app", "no module named 'no_such_package_xyz'"),
        ("helpdesk_app:no_such_attribute", "has no attribute 'no_such_attribute'"),
        ("helpdesk_app.articles:Articles", "is type, not a switchboard.app.App"),
        ("tests.fakes.broken_app:not_an_app", "is dict, not a switchboard.app.App"),
        ("tests.fakes.broken_app:factory_returning_none", "returned NoneType"),
        (
            "tests.fakes.broken_app:factory_that_raises",
            "factory_that_raises() failed: RuntimeError: misconfigured across",
        ),
        ("helpdesk_app", "expected 'package.module:attribute'"),
        ("tests.fakes.broken_app:failing_startup", "failed to start: ConnectionRefusedError"),
    ],
    ids=[
        "missing-module",
        "missing-attribute",
        "a-class",
        "a-dict",
        "factory-none",
        "factory-raises",
        "no-colon",
        "startup-fails",
    ],
)
def test_a_broken_app_stops_the_service_with_one_clear_line(tmp_path: Path, spec: str, says: str) -> None:
    # The agent service never reaches object storage here: it stops before it would.
    nowhere = S3Server(endpoint="127.0.0.1:1", access_key="unused", secret_key="unused")
    env = service_env(tmp_path, free_port(), free_port(), free_port(), nowhere, SWITCHBOARD_APP=spec)
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", "agent"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if "SWITCHBOARD_APP=" in line]
    assert len(lines) == 1, output
    assert "cannot start" in lines[0] and f"SWITCHBOARD_APP={spec!r}" in lines[0], lines[0]
    assert says in lines[0], lines[0]
