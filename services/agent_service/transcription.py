"""Dictation (`input.transcribe`): recorded speech in, the text the composer shows out.

Who transcribes, in this order:
1. the app, when it brings its own `App(transcribe=...)` (it gets an `AudioInput` with the
   verified caller);
2. the configured provider's OpenAI-compatible `POST /audio/transcriptions`, through the same
   `AsyncOpenAI` client the chat models use (`ConfiguredModels.client`), with the model
   `SWITCHBOARD_TRANSCRIBE_MODEL`;
3. offline (no provider): a deterministic placeholder, `(offline transcript) 3.2 KiB of
   audio/webm`, so the UI path can be exercised without a network.

Limits. The audio is checked before anything else (`services.common.audio`: not empty, at most
`SWITCHBOARD_TRANSCRIBE_MAX_BYTES`, a media type browsers record). The recording's duration is not
measured (that needs an audio decoder); it is bounded by its size, and the work by
`SWITCHBOARD_TRANSCRIBE_TIMEOUT_S`, which covers the provider call with its retries or the app's
function.

What the provider reported. `transcribe` returns a `Transcript`: the text and, when the provider
heard it, the model and the usage its response carried (`Transcription.usage`: tokens for the
gpt-4o transcription models, only the audio's duration for whisper-1, or nothing from servers that
do not report it). Counting that usage (the accounting, the tenant's token budget, the model
metrics) is the caller's business (`ChatService.Transcribe`); the app's own function and the
offline placeholder report none.

Errors, as domain errors (the gRPC boundary maps them): bad audio is `InvalidRequest`, including
what the provider refuses (HTTP 400, 413, 415, 422: the message says why); a provider that fails,
refuses our credentials, rate-limits, cannot be reached or does not answer in time is `Unavailable`.
Details go to the log, not to the caller.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from openai import APIConnectionError, APIStatusError, APITimeoutError, AsyncOpenAI
from openai.types.audio.transcription import UsageDuration, UsageTokens

from services.common.audio import FILE_EXTENSIONS, audio_problem, media_type
from switchboard.app import AudioInput, Caller, InvalidRequest, Unavailable

log = logging.getLogger(__name__)

DEFAULT_MODEL: Final = "gpt-4o-mini-transcribe"
DEFAULT_MAX_BYTES: Final = 10 * 1024 * 1024
DEFAULT_TIMEOUT_S: Final = 60.0
_BAD_AUDIO_STATUSES: Final = frozenset({400, 413, 415, 422})
_MAX_PROVIDER_MESSAGE_CHARS: Final = 200


@dataclass(frozen=True, slots=True)
class ProviderUsage:
    """What the provider reported for one transcription: the model asked (its responses do not
    name one), the tokens when it reported tokens (0 and 0 otherwise) and the audio's seconds when
    it reported a duration instead (whisper-1)."""

    model: str
    input_tokens: int = 0
    output_tokens: int = 0
    seconds: float | None = None


@dataclass(frozen=True, slots=True)
class Transcript:
    """What `Transcriber.transcribe` heard: the text, and the provider's usage when the provider
    transcribed it (None: offline, or the app's own function)."""

    text: str
    usage: ProviderUsage | None = None


def _tokens(value: object) -> int:
    """A reported token count as a count: anything but a non-negative int is 0 (a compatible
    server may send what the client does not validate)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def reported_usage(model: str, usage: object) -> ProviderUsage:
    """The usage of an OpenAI `Transcription` (`UsageTokens`, `UsageDuration` or None)."""
    if isinstance(usage, UsageTokens):
        return ProviderUsage(model, _tokens(usage.input_tokens), _tokens(usage.output_tokens))
    if isinstance(usage, UsageDuration) and isinstance(usage.seconds, int | float):
        return ProviderUsage(model, seconds=float(usage.seconds))
    return ProviderUsage(model)


def offline_transcript(audio: AudioInput) -> str:
    """The deterministic offline text: the recording's size and media type."""
    return f"(offline transcript) {len(audio.data) / 1024:.1f} KiB of {audio.media_type}"


class Transcriber:
    """Transcribes one recording for a verified caller (see the module docstring)."""

    def __init__(
        self,
        client: AsyncOpenAI | None = None,
        *,
        app_transcribe: Callable[[AudioInput], Awaitable[str]] | None = None,
        model: str = DEFAULT_MODEL,
        provider: str = "openai",
        max_bytes: int = DEFAULT_MAX_BYTES,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self._client = client
        self._app_transcribe = app_transcribe
        self.model = model
        self.provider = provider
        """The configured provider's label (`ConfiguredModels.provider`), as the model metrics
        name it for the chat models too."""
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    @property
    def source(self) -> str:
        """Who transcribes: "app", "provider" or "offline"."""
        if self._app_transcribe is not None:
            return "app"
        return "offline" if self._client is None else "provider"

    @property
    def spends_tokens(self) -> bool:
        """Whether a transcription spends model tokens of the provider (the tenant's budget
        applies): only when the provider transcribes. The offline placeholder spends nothing, and
        what an app's own function costs is the app's business (it reports no usage)."""
        return self.source == "provider"

    async def transcribe(self, data: bytes, mime_type: str, caller: Caller) -> Transcript:
        """The text of the recording, with the provider's usage when the provider heard it;
        `InvalidRequest` for unusable audio, `Unavailable` when the provider (or the app's backend,
        by raising it) fails."""
        problem = audio_problem(len(data), mime_type, self.max_bytes)
        if problem is not None:
            raise InvalidRequest(problem)
        audio = AudioInput(data=data, mime_type=mime_type, caller=caller)
        try:
            async with asyncio.timeout(self.timeout_s):
                if self._app_transcribe is not None:
                    return Transcript(await self._app_transcribe(audio))
                if self._client is None:
                    return Transcript(offline_transcript(audio))
                return await self._provider(self._client, audio)
        except TimeoutError:
            log.warning("transcription (%s) took longer than %.0f s", self.source, self.timeout_s)
            raise Unavailable(
                f"transcription did not finish within {self.timeout_s:g} s; try a shorter recording"
            ) from None

    async def _provider(self, client: AsyncOpenAI, audio: AudioInput) -> Transcript:
        kind = media_type(audio.mime_type)
        upload = (f"dictation.{FILE_EXTENSIONS[kind]}", audio.data, kind)
        try:
            result = await client.audio.transcriptions.create(
                model=self.model, file=upload, timeout=self.timeout_s
            )
        except APIStatusError as error:
            log.warning(
                "transcription with %s failed: HTTP %d %s", self.model, error.status_code, error.message
            )
            if error.status_code in _BAD_AUDIO_STATUSES:
                reason = error.message[:_MAX_PROVIDER_MESSAGE_CHARS]
                raise InvalidRequest(f"the transcription provider refused the audio: {reason}") from None
            raise Unavailable(
                f"transcription is unavailable: the provider answered HTTP {error.status_code}; "
                "try again later"
            ) from None
        except APITimeoutError:
            log.warning("transcription with %s took longer than %.0f s", self.model, self.timeout_s)
            raise Unavailable(
                f"transcription did not finish within {self.timeout_s:g} s; try a shorter recording"
            ) from None
        except APIConnectionError as error:
            log.warning("transcription with %s failed: %s", self.model, error)
            raise Unavailable("transcription is unavailable: the provider cannot be reached") from None
        return Transcript(result.text, reported_usage(self.model, result.usage))


__all__ = [
    "DEFAULT_MODEL",
    "ProviderUsage",
    "Transcriber",
    "Transcript",
    "offline_transcript",
    "reported_usage",
]
