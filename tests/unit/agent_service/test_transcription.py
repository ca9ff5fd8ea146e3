"""`Transcriber`: checks before anything runs, who transcribes, and the time bound."""

from __future__ import annotations

import asyncio

import pytest

from services.agent_service.transcription import Transcriber
from switchboard.app import AudioInput, Caller, InvalidRequest, Unavailable

CALLER = Caller(tenant="acme", user="alice", role="user", locale="en")


async def test_offline_without_a_provider_or_an_app() -> None:
    transcriber = Transcriber()
    assert transcriber.source == "offline"
    text = await transcriber.transcribe(b"x" * 2048, "audio/ogg;codecs=opus", CALLER)
    assert text == "(offline transcript) 2.0 KiB of audio/ogg"


async def test_the_apps_function_gets_checked_audio_and_the_caller() -> None:
    seen: list[AudioInput] = []

    async def transcribe(audio: AudioInput) -> str:
        seen.append(audio)
        return "from the app"

    transcriber = Transcriber(app_transcribe=transcribe, max_bytes=10)
    assert transcriber.source == "app"
    assert await transcriber.transcribe(b"abc", "Audio/WebM; codecs=opus", CALLER) == "from the app"
    assert seen == [AudioInput(data=b"abc", mime_type="Audio/WebM; codecs=opus", caller=CALLER)]
    assert seen[0].media_type == "audio/webm"
    for data, mime_type, reason in [
        (b"abc", "audio/wav", "unsupported audio type"),
        (b"", "audio/webm", "empty"),
        (b"x" * 11, "audio/webm", "more than the limit of 10 bytes"),
    ]:
        with pytest.raises(InvalidRequest, match=reason):
            await transcriber.transcribe(data, mime_type, CALLER)
    assert len(seen) == 1


async def test_a_transcription_that_takes_too_long_is_unavailable() -> None:
    async def slow(audio: AudioInput) -> str:
        await asyncio.sleep(10)
        return "late"

    transcriber = Transcriber(app_transcribe=slow, timeout_s=0.05)
    with pytest.raises(Unavailable, match=r"did not finish within 0\.05 s"):
        await transcriber.transcribe(b"abc", "audio/mp4", CALLER)
