"""`Transcriber`: checks before anything runs, who transcribes, the time bound, and the usage the
provider reported (through the real `openai` client against the fake server)."""

from __future__ import annotations

import asyncio
from typing import Literal

import pytest
from openai import AsyncOpenAI
from openai.types.audio.transcription import UsageDuration, UsageTokens

from services.agent_service.transcription import ProviderUsage, Transcriber, Transcript, reported_usage
from switchboard.app import AudioInput, Caller, InvalidRequest, Unavailable
from tests.fakes.openai_server import fake_openai_server

CALLER = Caller(tenant="acme", user="alice", role="user", locale="en")


async def test_offline_without_a_provider_or_an_app() -> None:
    transcriber = Transcriber()
    assert transcriber.source == "offline"
    assert not transcriber.spends_tokens
    transcript = await transcriber.transcribe(b"x" * 2048, "audio/ogg;codecs=opus", CALLER)
    assert transcript == Transcript("(offline transcript) 2.0 KiB of audio/ogg", usage=None)


async def test_the_apps_function_gets_checked_audio_and_the_caller() -> None:
    seen: list[AudioInput] = []

    async def transcribe(audio: AudioInput) -> str:
        seen.append(audio)
        return "from the app"

    transcriber = Transcriber(app_transcribe=transcribe, max_bytes=10)
    assert transcriber.source == "app"
    assert not transcriber.spends_tokens, "the app's function reports no usage"
    transcript = await transcriber.transcribe(b"abc", "Audio/WebM; codecs=opus", CALLER)
    assert transcript == Transcript("from the app", usage=None)
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


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("tokens", ProviderUsage("whisper-test", input_tokens=2500 // 100 + 1, output_tokens=5)),
        ("duration", ProviderUsage("whisper-test", seconds=2.5)),
        ("none", ProviderUsage("whisper-test")),
    ],
)
async def test_the_provider_reports_its_usage(
    kind: Literal["tokens", "duration", "none"], expected: ProviderUsage
) -> None:
    async with fake_openai_server() as fake:
        fake.transcription_usage = kind
        client = AsyncOpenAI(base_url=fake.base_url, api_key="sk-test", max_retries=0)
        try:
            transcriber = Transcriber(client, model="whisper-test", provider="gemini")
            assert transcriber.source == "provider" and transcriber.spends_tokens
            assert transcriber.provider == "gemini"
            transcript = await transcriber.transcribe(b"x" * 2500, "audio/webm", CALLER)
        finally:
            await client.close()
    assert transcript == Transcript("heard 2500 bytes of audio/webm", usage=expected)


def test_reported_usage_counts_only_sane_token_numbers() -> None:
    tokens = UsageTokens(type="tokens", input_tokens=7, output_tokens=3, total_tokens=10)
    assert reported_usage("m", tokens) == ProviderUsage("m", 7, 3)
    assert reported_usage("m", UsageDuration(type="duration", seconds=1.5)) == ProviderUsage("m", seconds=1.5)
    assert reported_usage("m", None) == ProviderUsage("m")
    assert reported_usage("m", {"input_tokens": 5}) == ProviderUsage("m")  # not what the client parses
    odd = UsageTokens.construct(type="tokens", input_tokens=-4, output_tokens=None, total_tokens=0)
    assert reported_usage("m", odd) == ProviderUsage("m", 0, 0)
