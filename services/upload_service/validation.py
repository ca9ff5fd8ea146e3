"""What the upload service accepts: names, types, sizes and content that matches its declared type.

Every check here runs before anything is written, or while bytes stream in, so that a refusal leaves
nothing behind. Refusals are domain errors (`switchboard.app`), mapped to a status at the gRPC boundary:

- `InvalidRequest` (INVALID_ARGUMENT): a missing or malformed MIME type, a type outside the
  allow-list, an empty file, a name with a NUL character, a declared size that the bytes do not
  match, content whose magic bytes contradict the declared type.
- `LimitExceeded` (RESOURCE_EXHAUSTED) with "too large" in the message: more bytes than
  `SWITCHBOARD_UPLOAD_MAX_BYTES`, declared or received (the edge answers 413 for it on upload routes).

File names. The name the user gave is what ChatKit shows, so it is kept as given
(`display_name`, only truncated to `MAX_NAME_CHARS`); it never becomes part of an object key. A
sanitised form (`storage_name`: no path, no control or bidi-format characters, at most 255 UTF-8
bytes, "file" when nothing is left) is what goes into logs and download headers. The only name
refused outright is one containing NUL: no file system allows it, and PostgreSQL text/jsonb columns
(where ChatKit items that reference attachments may end up) cannot store it.

Content sniffing. The first `SNIFF_BYTES` of the content are checked against the declared type:
- text-like types (`text/*`, JSON, XML, YAML) must be UTF-8 without NUL bytes (JSON must also start
  like a JSON value). UTF-16 text is therefore refused, a deliberate simplification;
- binary types that `puremagic`'s signature database knows (PNG, JPEG, GIF, WebP, PDF, ...) must be
  recognised as that type;
- other binary types cannot be verified and are accepted as declared: they are only reachable when an
  operator adds them to the allow-list.
"""

from __future__ import annotations

import codecs
import re
import unicodedata
from dataclasses import dataclass
from typing import Final

import puremagic

from services.common.config import Settings
from services.common.errors import invalid
from switchboard.app import LimitExceeded, SwitchboardError

# The part of a file the content check reads (direct uploads buffer this much before storing).
SNIFF_BYTES: Final = 8192
# Names longer than this are truncated (keeping a short extension) for display.
MAX_NAME_CHARS: Final = 255
# A sanitised name fits common file-system limits (255 bytes).
MAX_STORAGE_NAME_BYTES: Final = 255
FALLBACK_NAME: Final = "file"
_MAX_SUFFIX_CHARS: Final = 16

_MIME: Final = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}$")
# Names browsers or tools still use for a registered type.
_MIME_ALIASES: Final = {
    "image/jpg": "image/jpeg",
    "image/pjpeg": "image/jpeg",
    "image/x-png": "image/png",
    "image/x-ms-bmp": "image/bmp",
    "image/x-icon": "image/vnd.microsoft.icon",
    "application/x-pdf": "application/pdf",
    "text/x-markdown": "text/markdown",
    "application/x-json": "application/json",
}
_TEXT_TYPES: Final = frozenset(
    {
        "application/json",
        "application/xml",
        "application/yaml",
        "application/x-yaml",
        "application/x-ndjson",
        "application/javascript",
        "application/sql",
    }
)
_TEXT_SUFFIXES: Final = ("+json", "+xml", "+yaml")
_JSON_STARTS: Final = frozenset(b'{["-0123456789tfn')


def _known_binary_types() -> frozenset[str]:
    """Every MIME type puremagic has a signature for (normalised like declared types)."""
    magic = [*puremagic.magic_header_array, *puremagic.magic_footer_array]
    for extra in puremagic.multi_part_dict.values():
        magic.extend(extra)
    types = {_MIME_ALIASES.get(m.mime_type.lower(), m.mime_type.lower()) for m in magic if m.mime_type}
    return frozenset(t for t in types if not is_text_type(t))


def is_text_type(mime_type: str) -> bool:
    return mime_type.startswith("text/") or mime_type in _TEXT_TYPES or mime_type.endswith(_TEXT_SUFFIXES)


def is_image_type(mime_type: str) -> bool:
    """Images become ChatKit `image` attachments, with a preview URL."""
    return mime_type.startswith("image/")


# --------------------------------------------------------------------------- names


def _truncate(name: str, limit: int, *, in_bytes: bool) -> str:
    """Shorten `name` to `limit` characters (UTF-8 bytes when `in_bytes`), keeping a short extension."""

    def size(text: str) -> int:
        return len(text.encode()) if in_bytes else len(text)

    if size(name) <= limit:
        return name
    stem, dot, suffix = name.rpartition(".")
    keep = f".{suffix}" if dot and stem and len(suffix) <= _MAX_SUFFIX_CHARS else ""
    stem = name[: len(name) - len(keep)]
    budget = limit - size(keep)
    stem = stem.encode()[:budget].decode(errors="ignore") if in_bytes else stem[:budget]
    return stem + keep


def display_name(name: str) -> str:
    """The name shown to the user: as given, at most MAX_NAME_CHARS characters; refused with NUL."""
    if "\x00" in name:
        raise invalid("the file name must not contain NUL characters")
    if not name.strip():
        return FALLBACK_NAME
    return _truncate(name, MAX_NAME_CHARS, in_bytes=False)


def storage_name(name: str) -> str:
    """A name safe for logs and download headers: last path segment, printable, at most 255 bytes.

    Control, format (bidi overrides), surrogate, private-use and unassigned characters are dropped,
    whitespace runs become one space, leading/trailing dots and spaces go (no "..", no hidden
    files), and an empty result becomes "file". Object keys never use it either: they are built from
    the attachment id only.
    """
    name = unicodedata.normalize("NFC", name).replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if not unicodedata.category(ch).startswith("C"))
    name = " ".join(name.split()).strip(". ")
    if not name:
        return FALLBACK_NAME
    return _truncate(name, MAX_STORAGE_NAME_BYTES, in_bytes=True) or FALLBACK_NAME


# --------------------------------------------------------------------------- types and sizes


def normalize_mime_type(value: str) -> str:
    """The MIME essence (`type/subtype`, lower case, parameters dropped, aliases resolved)."""
    essence = value.split(";", 1)[0].strip().lower()
    if not essence:
        raise invalid("mime_type is required")
    if not _MIME.fullmatch(essence):
        raise invalid("mime_type is not a valid MIME type")
    return _MIME_ALIASES.get(essence, essence)


def too_large(limit: int) -> SwitchboardError:
    return LimitExceeded(f"file too large: the limit is {limit} bytes")


@dataclass(frozen=True, slots=True)
class UploadPolicy:
    """The configurable limits: a maximum size and a MIME allow-list (`type/*` entries allowed)."""

    max_bytes: int
    allowed_types: frozenset[str]

    @classmethod
    def from_settings(cls, settings: Settings) -> UploadPolicy:
        allowed = frozenset(
            entry if entry.endswith("/*") else normalize_mime_type(entry)
            for entry in (item.strip().lower() for item in settings.upload_allowed_types)
            if entry
        )
        return cls(max_bytes=settings.upload_max_bytes, allowed_types=allowed)

    def check_type(self, mime_type: str) -> str:
        """The normalised type, or INVALID_ARGUMENT when it is malformed or not allowed."""
        essence = normalize_mime_type(mime_type)
        wildcard = essence.split("/", 1)[0] + "/*"
        if essence not in self.allowed_types and wildcard not in self.allowed_types:
            raise invalid(f"files of type {essence} are not accepted")
        return essence

    def check_declared_size(self, size: int, *, required: bool) -> None:
        """A declared size: positive when required (two-phase), 0 meaning unknown otherwise."""
        if size < 0:
            raise invalid("size must not be negative")
        if size == 0 and required:
            raise invalid("size is required (empty files are not accepted)")
        if size > self.max_bytes:
            raise too_large(self.max_bytes)


# --------------------------------------------------------------------------- content


class ContentMismatch(Exception):
    """The content does not look like its declared type (the message says why)."""


_KNOWN_BINARY: Final = _known_binary_types()


def _detected_types(head: bytes) -> set[str]:
    try:
        matches = puremagic.magic_string(head)
    except (puremagic.PureError, ValueError):
        return set()
    return {_MIME_ALIASES.get(m.mime_type.lower(), m.mime_type.lower()) for m in matches if m.mime_type}


def check_content(head: bytes, mime_type: str, *, complete: bool) -> None:
    """Raise ContentMismatch unless `head` (the file's first bytes) fits the normalised `mime_type`.

    `complete` says that `head` is the whole file, so a multi-byte UTF-8 sequence cut at its end is
    an error rather than the edge of the sample.
    """
    head = head[:SNIFF_BYTES]
    if is_text_type(mime_type):
        if b"\x00" in head:
            raise ContentMismatch(f"the content is binary, not {mime_type}")
        try:
            text = codecs.getincrementaldecoder("utf-8-sig")().decode(head, final=complete)
        except UnicodeDecodeError:
            raise ContentMismatch(f"the content is not UTF-8 text ({mime_type})") from None
        if mime_type == "application/json" or mime_type.endswith("+json"):
            start = text.lstrip()[:1].encode()
            if start and start[0] not in _JSON_STARTS:
                raise ContentMismatch("the content is not JSON")
        return
    if mime_type not in _KNOWN_BINARY:
        return  # nothing to check it against; only reachable through the operator's allow-list
    if mime_type not in _detected_types(head):
        raise ContentMismatch(f"the content does not match its declared type {mime_type}")
