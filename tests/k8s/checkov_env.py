"""checkov in a virtual environment of its own (it pins an old boto3 that the project's cannot share).

The environment is cached outside the work tree, so repeated runs (and fresh clones on the same
machine, as CI makes) reuse it: `$SWITCHBOARD_CHECKOV_VENV`, else
/tmp/switchboard-tools/checkov-<version>. Creating it takes about a minute; CI can do that before
the tests with `python -m tests.k8s.checkov_env`.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Final

CHECKOV_VERSION: Final = "3.3.30"
_STAMP: Final = ".switchboard-complete"


def venv_dir() -> Path:
    default = Path("/tmp/switchboard-tools") / f"checkov-{CHECKOV_VERSION}"
    return Path(os.environ.get("SWITCHBOARD_CHECKOV_VENV", str(default)))


def ensure_checkov(timeout_s: float = 600) -> Path:
    """The checkov executable of the cached environment, created (once, under a lock) if needed."""
    directory = venv_dir()
    executable = directory / "bin" / "checkov"
    if (directory / _STAMP).exists():
        return executable
    directory.parent.mkdir(parents=True, exist_ok=True)
    with (directory.parent / f"{directory.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (directory / _STAMP).exists():
            return executable
        shutil.rmtree(directory, ignore_errors=True)  # a half-made environment from an interrupted run
        subprocess.run([sys.executable, "-m", "venv", str(directory)], check=True, timeout=120)
        subprocess.run(
            [
                str(directory / "bin" / "python"),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                f"checkov=={CHECKOV_VERSION}",
            ],
            check=True,
            timeout=timeout_s,
        )
        version = subprocess.run(
            [str(executable), "--version"], capture_output=True, text=True, check=True, timeout=60
        ).stdout.strip()
        if version != CHECKOV_VERSION:
            raise RuntimeError(f"{executable} reports version {version}, expected {CHECKOV_VERSION}")
        (directory / _STAMP).write_text(CHECKOV_VERSION + "\n")
    return executable


if __name__ == "__main__":
    print(ensure_checkov())
