"""Dictation audio rules shared by the edge and the agent service (ChatKit's `input.transcribe`).

ChatKit's composer records with the browser's MediaRecorder and sends one of three media types,
with or without codec parameters (`audio/webm;codecs=opus`, `audio/ogg;codecs=opus`, `audio/mp4`).
Both services check the same rules: the edge before any gRPC traffic (a clear HTTP 400), the agent
service again because its gRPC API is public.
"""

from __future__ import annotations

import math
from typing import Final

ACCEPTED_MEDIA_TYPES: Final = ("audio/webm", "audio/ogg", "audio/mp4")
FILE_EXTENSIONS: Final = {"audio/webm": "webm", "audio/ogg": "ogg", "audio/mp4": "mp4"}
"""The file name extension a transcription API infers the container from."""
_JSON_ENVELOPE_BYTES: Final = 64 * 1024


def media_type(mime_type: str) -> str:
    """`audio/webm;codecs=opus` -> `audio/webm` (lower case, no parameters)."""
    return mime_type.split(";", 1)[0].strip().lower()


def audio_problem(size: int, mime_type: str, max_bytes: int) -> str | None:
    """Why this audio cannot be transcribed (a short message for the client), or None."""
    kind = media_type(mime_type)
    if kind not in ACCEPTED_MEDIA_TYPES:
        shown = mime_type[:64] or "(empty)"
        return f"unsupported audio type {shown!r}: send one of {', '.join(ACCEPTED_MEDIA_TYPES)}"
    if size == 0:
        return "the audio is empty"
    if size > max_bytes:
        return f"the audio is {size} bytes, more than the limit of {max_bytes} bytes"
    return None


def transcribe_body_limit(max_audio_bytes: int) -> int:
    """The largest `input.transcribe` JSON body the edge reads: the audio in base64 plus room for
    the rest of the request."""
    return 4 * math.ceil(max_audio_bytes / 3) + _JSON_ENVELOPE_BYTES


__all__ = [
    "ACCEPTED_MEDIA_TYPES",
    "FILE_EXTENSIONS",
    "audio_problem",
    "media_type",
    "transcribe_body_limit",
]
