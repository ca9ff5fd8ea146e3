"""Dictation: what an app's own transcription function receives (`App(transcribe=...)`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from switchboard.app._context import Caller


@dataclass(frozen=True, slots=True)
class AudioInput:
    """Speech the user recorded in the composer (ChatKit's `input.transcribe`), already checked:
    not empty, within `SWITCHBOARD_TRANSCRIBE_MAX_BYTES`, and of one of the media types browsers
    record (`audio/webm`, `audio/ogg`, `audio/mp4`)."""

    data: bytes
    """The audio bytes, as recorded."""
    mime_type: str
    """The MIME type as the browser names it, e.g. `audio/webm;codecs=opus`."""
    caller: Caller
    """Who is dictating (verified tenant, user, role and locale)."""

    @property
    def media_type(self) -> str:
        """The media type without parameters, lower case, e.g. `audio/webm`."""
        return self.mime_type.split(";", 1)[0].strip().lower()


TranscribeFunction = Callable[[AudioInput], Awaitable[str]]
"""An app's transcription: the audio in, the text the composer shows out."""

__all__ = ["AudioInput", "TranscribeFunction"]
