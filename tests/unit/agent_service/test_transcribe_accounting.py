"""`ChatService.Transcribe` counts a provider's transcription: admitted against the tenant's token
budget when the provider transcribes, its reported tokens recorded as the caller's usage under the
transcription model's name and counted in the model metrics; a failure to record them is logged and
the transcript still answered. Offline nothing is spent: no budget, nothing recorded."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from grpc import aio
from openai import AsyncOpenAI
from prometheus_client import REGISTRY

from services.agent_service.server import ChatService
from services.agent_service.transcription import Transcriber
from services.common.auth import Principal, TokenVerifier, mint_token
from services.common.grpc_auth import AuthInterceptor
from services.limits import UsageDelta
from switchboard.app import Unavailable
from switchboard.v1 import chat_pb2, chat_pb2_grpc
from tests.fakes.openai_server import FakeOpenAI, fake_openai_server, transcription_usage_of

SECRET = "transcribe-accounting-secret-" + "s" * 32
MODEL = "transcribe-accounting-model"
"""A model name of this module's own: the metric samples it reads are only this module's."""
AUDIO = b"\x1aE\xdf\xa3" * 300  # 1,200 bytes


@dataclass
class RecordingConversation:
    """What `Transcribe` asks of the conversation, recorded; `record_usage` fails when told to."""

    admitted: list[tuple[Principal, bool]] = field(default_factory=list)
    recorded: list[tuple[Principal, UsageDelta | None]] = field(default_factory=list)
    failure: Exception | None = None

    async def admit(self, owner: Principal, *, budget: bool = False) -> None:
        self.admitted.append((owner, budget))

    async def record_usage(self, owner: Principal, usage: UsageDelta | None) -> None:
        if self.failure is not None:
            raise self.failure
        self.recorded.append((owner, usage))


@dataclass
class Served:
    stub: chat_pb2_grpc.ChatServiceStub
    conversation: RecordingConversation
    fake: FakeOpenAI


async def _serve(transcriber: Transcriber, conversation: RecordingConversation) -> tuple[aio.Server, int]:
    server = aio.server(interceptors=[AuthInterceptor(TokenVerifier(SECRET))])
    service = ChatService(conversation, transcriber)  # type: ignore[arg-type]
    chat_pb2_grpc.add_ChatServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    async with fake_openai_server() as fake:
        client = AsyncOpenAI(base_url=fake.base_url, api_key="sk-test", max_retries=0)
        conversation = RecordingConversation()
        server, port = await _serve(Transcriber(client, model=MODEL, provider="openai"), conversation)
        try:
            async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                yield Served(chat_pb2_grpc.ChatServiceStub(channel), conversation, fake)
        finally:
            await server.stop(None)
            await client.close()


def _metadata() -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {mint_token(SECRET, tenant='acme', user='alice')}"),)


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, {"provider": "openai", "model": MODEL, **labels}) or 0.0


def _metrics() -> tuple[float, float, float]:
    return (
        _metric("switchboard_model_calls_total"),
        _metric("switchboard_model_tokens_total", direction="input"),
        _metric("switchboard_model_tokens_total", direction="output"),
    )


async def _transcribe(stub: chat_pb2_grpc.ChatServiceStub, audio: bytes = AUDIO) -> str:
    reply = await stub.Transcribe(
        chat_pb2.TranscribeRequest(audio=audio, mime_type="audio/webm"), metadata=_metadata(), timeout=10
    )
    return reply.text


async def test_the_providers_tokens_are_admitted_recorded_and_counted(served: Served) -> None:
    before = _metrics()
    assert await _transcribe(served.stub) == f"heard {len(AUDIO)} bytes of audio/webm"
    reported = transcription_usage_of(AUDIO, "audio/webm")
    assert reported is not None
    tokens = (reported["input_tokens"], reported["output_tokens"])
    assert tokens == (13, 5)
    owner = served.conversation.admitted[0][0]
    assert (owner.tenant, owner.user) == ("acme", "alice")
    assert served.conversation.admitted == [(owner, True)], "the budget applies"
    assert served.conversation.recorded == [(owner, UsageDelta(tokens={MODEL: tokens}))]
    after = _metrics()
    assert (after[0] - before[0], after[1] - before[1], after[2] - before[2]) == (1, *tokens)


async def test_a_duration_counts_the_call_and_records_no_tokens(served: Served) -> None:
    served.fake.transcription_usage = "duration"
    before = _metrics()
    assert await _transcribe(served.stub)
    assert served.conversation.recorded == []
    after = _metrics()
    assert (after[0] - before[0], after[1] - before[1], after[2] - before[2]) == (1, 0, 0)


async def test_a_failed_recording_still_answers_the_text(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    served.conversation.failure = Unavailable("the database is unavailable")
    with caplog.at_level(logging.WARNING, logger="services.agent_service.server"):
        assert await _transcribe(served.stub) == f"heard {len(AUDIO)} bytes of audio/webm"
    warning = next(r.getMessage() for r in caplog.records if "was not recorded" in r.getMessage())
    assert f"{MODEL}: 13 input + 5 output tokens" in warning
    assert "acme/alice" in warning and "the database is unavailable" in warning


async def test_offline_spends_nothing() -> None:
    conversation = RecordingConversation()
    server, port = await _serve(Transcriber(), conversation)
    try:
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            text = await _transcribe(chat_pb2_grpc.ChatServiceStub(channel))
    finally:
        await server.stop(None)
    assert text.startswith("(offline transcript)")
    assert [budget for _, budget in conversation.admitted] == [False]
    assert conversation.recorded == []
