"""Dictation (`input.transcribe`) through the real edge and agent service.

Three stacks: the shared offline one (the demo app, no provider: the deterministic placeholder),
one whose provider is the fake OpenAI-compatible server (tests/fakes/openai_server.py, which records
the multipart request it got), and one running an app with its own `transcribe`
(tests/fakes/dictation_app.py). Every 200 body is checked against chatkit's `TranscriptionResult`
and ChatKitServer's exact bytes; every refusal is a 400 with a clear message that leaves the stack
serving.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import grpc
import pytest
from chatkit.types import TranscriptionResult
from grpc import aio

from switchboard.v1 import chat_pb2, chat_pb2_grpc
from tests.fakes.openai_server import FakeOpenAI, Transcription, fake_openai_server
from tests.support.chatkit_wire import call, error_of, request, stream, user_input
from tests.support.processes import Stack, running_stack

MIB = 1024 * 1024
RECORDING = bytes(range(256)) * 12 + b"\x1aE\xdf\xa3" * 50  # 3,272 bytes: "3.2 KiB"


def _transcribe(audio: bytes | str, mime_type: str = "audio/webm;codecs=opus") -> dict[str, Any]:
    encoded = audio if isinstance(audio, str) else base64.b64encode(audio).decode()
    return request("input.transcribe", audio_base64=encoded, mime_type=mime_type)


async def _dictate(
    http: aiohttp.ClientSession, stack: Stack, audio: bytes, mime_type: str = "audio/webm;codecs=opus"
) -> str:
    """The transcript, after checking the body is exactly what ChatKitServer would send."""
    async with http.post(
        f"{stack.edge_url}/chatkit/api", json=_transcribe(audio, mime_type), headers=stack.headers()
    ) as response:
        raw = await response.read()
        assert response.status == 200, raw
        assert response.headers["Content-Type"].startswith("application/json")
    result = TranscriptionResult.model_validate_json(raw)
    assert raw == result.model_dump_json(by_alias=True, exclude_none=True).encode()
    return result.text


async def _refused(http: aiohttp.ClientSession, stack: Stack, body: dict[str, Any], status: int) -> str:
    code, message = error_of(await call(http, stack.edge_url, body, stack.headers(), status=status))
    assert code == {400: "INVALID_ARGUMENT", 413: "RESOURCE_EXHAUSTED", 503: "UNAVAILABLE"}[status]
    return message


async def _still_serving(http: aiohttp.ClientSession, stack: Stack) -> None:
    events = await stream(
        http, stack.edge_url, request("threads.create", input=user_input("still there?")), stack.headers()
    )
    assert events[0].type == "thread.created"
    assert await _dictate(http, stack, RECORDING)


# --------------------------------------------------------------------------- offline (the demo app)


async def test_offline_dictation_is_a_deterministic_placeholder(
    http: aiohttp.ClientSession, stack: Stack
) -> None:
    assert await _dictate(http, stack, RECORDING) == "(offline transcript) 3.2 KiB of audio/webm"
    assert await _dictate(http, stack, RECORDING, "audio/mp4") == "(offline transcript) 3.2 KiB of audio/mp4"


async def test_realistic_recordings_pass_the_body_limit(http: aiohttp.ClientSession, stack: Stack) -> None:
    # 3 MiB of audio is 4 MiB of JSON, four times SWITCHBOARD_MAX_BODY_BYTES: allowed for dictation.
    text = await _dictate(http, stack, b"\x00" * (3 * MIB), "audio/ogg;codecs=opus")
    assert text == "(offline transcript) 3072.0 KiB of audio/ogg"
    # Other operations keep the 1 MiB limit.
    padded = request("threads.create", input=user_input("x" * (2 * MIB)))
    assert "1048576" in await _refused(http, stack, padded, 413)


async def test_bad_dictation_is_a_clear_400_and_the_stack_still_serves(
    http: aiohttp.ClientSession, stack: Stack
) -> None:
    message = await _refused(http, stack, _transcribe(RECORDING, "audio/wav"), 400)
    assert "unsupported audio type 'audio/wav'" in message
    assert "audio/webm, audio/ogg, audio/mp4" in message
    message = await _refused(http, stack, _transcribe("this is not base64!"), 400)
    assert "audio_base64 is not valid base64" in message
    message = await _refused(http, stack, _transcribe(b"\x00" * (10 * MIB + 1)), 400)
    assert f"more than the limit of {10 * MIB} bytes" in message
    assert "the audio is empty" in await _refused(http, stack, _transcribe(b""), 400)
    # Far over the limit, the body itself is refused before it is read.
    huge = _transcribe("A" * (15 * MIB))
    assert "for input.transcribe" in await _refused(http, stack, huge, 413)
    await _still_serving(http, stack)


# --------------------------------------------------------------------------- gRPC, no edge


async def test_transcribe_over_grpc(stack: Stack) -> None:
    metadata = (("authorization", f"Bearer {stack.token()}"),)
    async with aio.insecure_channel(stack.agent_address) as channel:
        stub = chat_pb2_grpc.ChatServiceStub(channel)
        reply = await stub.Transcribe(
            chat_pb2.TranscribeRequest(audio=RECORDING, mime_type="audio/webm"), metadata=metadata, timeout=10
        )
        assert reply.text == "(offline transcript) 3.2 KiB of audio/webm"

        with pytest.raises(aio.AioRpcError) as anonymous:
            await stub.Transcribe(chat_pb2.TranscribeRequest(audio=RECORDING, mime_type="audio/webm"))
        assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED

        for bad, reason in [
            (chat_pb2.TranscribeRequest(audio=RECORDING, mime_type="video/mp4"), "unsupported audio type"),
            (chat_pb2.TranscribeRequest(audio=RECORDING), "unsupported audio type '(empty)'"),
            (chat_pb2.TranscribeRequest(mime_type="audio/ogg"), "the audio is empty"),
            (
                chat_pb2.TranscribeRequest(audio=b"\x00" * (10 * MIB + 1), mime_type="audio/mp4"),
                "more than the limit",
            ),
        ]:
            with pytest.raises(aio.AioRpcError) as refused:
                await stub.Transcribe(bad, metadata=metadata, timeout=10)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert reason in (refused.value.details() or "")


# --------------------------------------------------------------------------- the provider


@pytest.fixture(scope="module")
async def provider(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[Stack, FakeOpenAI]]:
    async with fake_openai_server() as fake:
        with running_stack(
            tmp_path_factory.mktemp("dictation-provider"),
            uploads=False,
            LLM_PROVIDER="openai",
            OPENAI_BASE_URL=fake.base_url,
            OPENAI_API_KEY="sk-test",
            SWITCHBOARD_TRANSCRIBE_MODEL="whisper-test",
        ) as running:
            yield running, fake


async def test_the_provider_gets_the_exact_audio_and_model(
    http: aiohttp.ClientSession, provider: tuple[Stack, FakeOpenAI]
) -> None:
    stack, fake = provider
    fake.transcriptions.clear()
    text = await _dictate(http, stack, RECORDING, "audio/webm;codecs=opus")
    assert text == f"heard {len(RECORDING)} bytes of audio/webm"
    assert fake.transcriptions == [Transcription("whisper-test", "dictation.webm", "audio/webm", RECORDING)]
    assert fake.requests == []  # no chat completion: dictation is not a turn

    audio = bytes(reversed(RECORDING))
    assert await _dictate(http, stack, audio, "audio/mp4") == f"heard {len(audio)} bytes of audio/mp4"
    assert fake.transcriptions[-1] == Transcription("whisper-test", "dictation.mp4", "audio/mp4", audio)


async def test_provider_failures(http: aiohttp.ClientSession, provider: tuple[Stack, FakeOpenAI]) -> None:
    stack, _ = provider
    message = await _refused(http, stack, _transcribe(b"REFUSE" + RECORDING), 400)
    assert message.startswith("the transcription provider refused the audio:")
    assert "corrupted or unsupported" in message
    message = await _refused(http, stack, _transcribe(b"FAIL" + RECORDING), 503)
    assert message == "dictation is unavailable right now; try again later"
    # Over gRPC the reason is visible (it names no address).
    async with aio.insecure_channel(stack.agent_address) as channel:
        stub = chat_pb2_grpc.ChatServiceStub(channel)
        with pytest.raises(aio.AioRpcError) as failed:
            await stub.Transcribe(
                chat_pb2.TranscribeRequest(audio=b"FAIL", mime_type="audio/ogg"),
                metadata=(("authorization", f"Bearer {stack.token()}"),),
                timeout=30,
            )
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "the provider answered HTTP 500" in (failed.value.details() or "")
    await _still_serving(http, stack)


# --------------------------------------------------------------------------- the app's own


@pytest.fixture(scope="module")
def own_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(
        tmp_path_factory.mktemp("dictation-app"),
        uploads=False,
        SWITCHBOARD_APP="tests.fakes.dictation_app:app",
    ) as running:
        yield running


async def test_an_apps_own_transcription_replaces_the_provider(
    http: aiohttp.ClientSession, own_app: Stack
) -> None:
    text = await _dictate(http, own_app, RECORDING, "audio/ogg;codecs=opus")
    assert text == f"app heard {len(RECORDING)} bytes of audio/ogg from alice@acme"
    message = await _refused(http, own_app, _transcribe(b"NOPE" + RECORDING), 400)
    assert message == "the app cannot hear this recording"
    message = await _refused(http, own_app, _transcribe(b"DOWN" + RECORDING), 503)
    assert message == "dictation is unavailable right now; try again later"
    # The app never sees what the service refuses.
    assert "unsupported audio type" in await _refused(http, own_app, _transcribe(b"NOPE", "audio/x"), 400)
