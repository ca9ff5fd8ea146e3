"""validation.py on its own: names, MIME types, sizes and content sniffing (no I/O)."""

from __future__ import annotations

import grpc
import pytest

from services.common.errors import grpc_status
from services.upload_service.validation import (
    MAX_NAME_CHARS,
    ContentMismatch,
    UploadPolicy,
    check_content,
    display_name,
    normalize_mime_type,
    storage_name,
)
from switchboard.app import InvalidRequest, LimitExceeded, SwitchboardError
from tests.unit.upload_service.conftest import PDF, make_settings, png_bytes

POLICY = UploadPolicy(max_bytes=1000, allowed_types=frozenset({"image/png", "text/plain", "image/*"}))


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("report.pdf", "report.pdf"),
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\me\\x.txt", "x.txt"),
        ("..", "file"),
        ("", "file"),
        ("   ", "file"),
        (".bashrc", "bashrc"),
        ("a\nb\r\tc.txt", "abc.txt"),
        ("\u202egnp.exe", "gnp.exe"),
        ("two   spaces\u00a0here.txt", "two spaces here.txt"),
        ("e\u0301.txt", "\u00e9.txt"),
    ],
)
def test_storage_name(given: str, stored: str) -> None:
    assert storage_name(given) == stored


def test_storage_name_is_at_most_255_utf8_bytes_and_keeps_the_extension() -> None:
    name = storage_name("é" * 10_000 + ".pdf")
    assert len(name.encode()) <= 255 and name.endswith(".pdf") and name.startswith("éé")


def test_display_name_keeps_the_original_but_bounded() -> None:
    assert display_name("../../etc/passwd") == "../../etc/passwd"
    assert display_name("line\nbreak") == "line\nbreak"
    long = display_name("x" * 10_000 + ".txt")
    assert len(long) == MAX_NAME_CHARS and long.endswith("x.txt")
    assert len(display_name("y" * 10_000)) == MAX_NAME_CHARS
    assert display_name("") == "file"
    with pytest.raises(InvalidRequest):
        display_name("a\x00b")


def test_mime_types_are_normalised_and_checked() -> None:
    assert normalize_mime_type(" Text/Plain; charset=UTF-8 ") == "text/plain"
    assert normalize_mime_type("image/jpg") == "image/jpeg"
    assert POLICY.check_type("image/webp") == "image/webp"  # through image/*
    for bad in ("", "text", "text/", "a b/c", "text/plain/x", "application/pdf"):
        with pytest.raises(InvalidRequest):
            POLICY.check_type(bad)


def test_sizes() -> None:
    POLICY.check_declared_size(0, required=False)
    POLICY.check_declared_size(1000, required=True)
    refusals: list[tuple[int, bool, type[SwitchboardError]]] = [
        (0, True, InvalidRequest),
        (-1, False, InvalidRequest),
        (1001, False, LimitExceeded),
    ]
    for size, required, kind in refusals:
        with pytest.raises(kind) as raised:
            POLICY.check_declared_size(size, required=required)
        if kind is LimitExceeded:
            assert "too large" in raised.value.message
            assert grpc_status(raised.value) == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_policy_from_settings() -> None:
    policy = UploadPolicy.from_settings(
        make_settings(upload_max_bytes=5, upload_allowed_types="image/PNG, text/*,")
    )
    assert policy.max_bytes == 5
    assert policy.allowed_types == frozenset({"image/png", "text/*"})
    assert policy.check_type("text/csv") == "text/csv"


@pytest.mark.parametrize(
    ("content", "mime_type"),
    [
        (png_bytes(), "image/png"),
        (b"\xff\xd8\xff\xe1\x00\x10Exif\x00\x00" + b"\x00" * 100, "image/jpeg"),
        (b"GIF89a\x01\x00\x01\x00", "image/gif"),
        (b"RIFF\x24\x00\x00\x00WEBPVP8 ", "image/webp"),
        (PDF, "application/pdf"),
        ("héllo\n".encode(), "text/plain"),
        ("\ufeffa,b\n".encode(), "text/csv"),
        (b'  {"a": 1}', "application/json"),
        (b"# title\n", "text/markdown"),
        (b"\x00\x01anything", "application/x-unknown-to-puremagic"),
    ],
)
def test_content_that_matches(content: bytes, mime_type: str) -> None:
    check_content(content, mime_type, complete=True)


@pytest.mark.parametrize(
    ("content", "mime_type"),
    [
        (b"plain text", "image/png"),
        (PDF, "image/jpeg"),
        (png_bytes(), "image/jpeg"),
        (png_bytes(), "text/plain"),
        (b"abc\x00def", "text/plain"),
        (b"\xc3\x28", "text/plain"),
        (b"hello", "application/json"),
    ],
)
def test_content_that_does_not_match(content: bytes, mime_type: str) -> None:
    with pytest.raises(ContentMismatch):
        check_content(content, mime_type, complete=True)


def test_a_utf8_sequence_cut_by_the_sample_is_fine_unless_the_file_ends_there() -> None:
    head = "a€".encode()[:-1]
    check_content(head, "text/plain", complete=False)
    with pytest.raises(ContentMismatch):
        check_content(head, "text/plain", complete=True)
