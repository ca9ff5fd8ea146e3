"""Dictation (`input.transcribe`) through the real edge and agent service.

Three stacks: the shared offline one (the demo app, no provider: the deterministic placeholder),
one whose provider is the fake OpenAI-compatible server (tests/fakes/openai_server.py, which records
the multipart request it got), and one running an app with its own `transcribe`
(tests/fakes/dictation_app.py). Every 200 body is checked against chatkit's `TranscriptionResult`
and ChatKitServer's exact bytes; every refusal is a 400 with a clear message that leaves the stack
serving.

Usage and the token budget: the fake provider reports tokens for each transcription (input: the
audio's bytes // 100 + 1, output: the words of its text); they show in the tenant's usage (the
admin service's `GetUsage`, what `switchboard usage` prints) under the transcription model and in
the agent's `switchboard_model_tokens_total`. A fourth stack, with a tiny
`SWITCHBOARD_LIMIT_TOKENS_PER_DAY`, refuses dictation through the provider once the budget is used
up; offline dictation spends nothing and is never refused by it.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import grpc
import pytest
from chatkit.types import TranscriptionResult
from grpc import aio

from services.common.auth import Principal
from services.common.config import Settings
from services.limits import LimitsStore, UsageDelta
from switchboard.v1 import admin_pb2, admin_pb2_grpc, chat_pb2, chat_pb2_grpc
from tests.fakes.openai_server import FakeOpenAI, Transcription, fake_openai_server, transcription_usage_of
from tests.support.chatkit_wire import call, error_of, request, stream, user_input
from tests.support.processes import Stack, running_stack
from tests.support.prometheus import scrape, value

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


def _reported_tokens(audio: bytes, content_type: str = "audio/webm") -> tuple[int, int]:
    """(input, output) tokens the fake provider reports for `audio`."""
    usage = transcription_usage_of(audio, content_type)
    assert usage is not None
    return usage["input_tokens"], usage["output_tokens"]


async def _usage(stack: Stack, tenant: str) -> admin_pb2.GetUsageResponse:
    """The tenant's usage of today, as the admin service answers it (what `switchboard usage` prints)."""
    metadata = (("authorization", f"Bearer {stack.token(tenant=tenant, user='boss', role='admin')}"),)
    async with aio.insecure_channel(stack.agent_address) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        return await admin.GetUsage(admin_pb2.GetUsageRequest(tenant=tenant), metadata=metadata, timeout=10)


def _token_rows(reply: admin_pb2.GetUsageResponse) -> list[tuple[str, str, int, int]]:
    return [(row.user, row.model, row.input_tokens, row.output_tokens) for row in reply.rows]


def _model_tokens(stack: Stack, model: str) -> tuple[float, float, float]:
    """The agent's `switchboard_model_calls_total` and `_tokens_total` (input, output) of `model`."""
    samples = scrape(stack.metrics_url("agent"))
    return (
        value(samples, "switchboard_model_calls_total", provider="openai", model=model),
        value(samples, "switchboard_model_tokens_total", provider="openai", model=model, direction="input"),
        value(samples, "switchboard_model_tokens_total", provider="openai", model=model, direction="output"),
    )


async def _post(
    http: aiohttp.ClientSession, stack: Stack, body: dict[str, Any], tenant: str
) -> tuple[int, bytes, dict[str, str]]:
    async with http.post(
        f"{stack.edge_url}/chatkit/api", json=body, headers=stack.headers(tenant=tenant)
    ) as response:
        return response.status, await response.read(), dict(response.headers)


SPENT = {"gpt-4.1-mini": (8, 4)}
"""What `_use_up_the_budget` records: more than the budget of 10 it sets."""


async def _use_up_the_budget(stack: Stack, tenant: str) -> None:
    """Give `tenant` a budget of 10 tokens a day and spend 12 of them (as a turn of alice's would)."""
    operator = Principal(tenant="ops", user="test", role="platform-admin")
    settings = Settings(SWITCHBOARD_DATABASE_URL=f"sqlite:///{stack.store_path}")
    limits = LimitsStore(settings, application_name="test")
    await limits.open()
    try:
        await limits.set_limits(operator, tenant, {"tokens_per_day": 10}, via="test")
        await limits.record(Principal(tenant=tenant, user="alice", role="user"), UsageDelta(tokens=SPENT))
    finally:
        await limits.close()


def _over_budget(status: int, raw: bytes, headers: dict[str, str]) -> None:
    """A 429 for the token budget, with Retry-After until midnight UTC at most."""
    assert status == 429, (status, raw[:300])
    code, message = error_of(json.loads(raw))
    assert code == "RESOURCE_EXHAUSTED" and "(tokens_per_day)" in message, message
    assert 1 <= int(headers["Retry-After"]) <= 86_400


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


async def test_offline_dictation_spends_nothing_and_a_used_up_budget_does_not_refuse_it(
    http: aiohttp.ClientSession, stack: Stack
) -> None:
    tenant = "t-dictation-offline"
    await _use_up_the_budget(stack, tenant)
    before = await _usage(stack, tenant)
    # A turn is refused: the budget is used up.
    status, raw, headers = await _post(http, stack, request("threads.create", input=user_input("hi")), tenant)
    _over_budget(status, raw, headers)
    # Offline dictation spends nothing: not refused, nothing counted.
    status, raw, _ = await _post(http, stack, _transcribe(RECORDING), tenant)
    assert status == 200, raw[:300]
    assert json.loads(raw)["text"] == "(offline transcript) 3.2 KiB of audio/webm"
    after = await _usage(stack, tenant)
    assert _token_rows(after) == _token_rows(before) == [("alice", "gpt-4.1-mini", *SPENT["gpt-4.1-mini"])]


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


async def test_the_tokens_the_provider_reports_are_the_users_usage_and_in_the_metrics(
    http: aiohttp.ClientSession, provider: tuple[Stack, FakeOpenAI]
) -> None:
    stack, _ = provider
    tenant = "t-dictation-usage"
    longer = RECORDING * 3
    metrics_before = _model_tokens(stack, "whisper-test")
    async with http.post(
        f"{stack.edge_url}/chatkit/api", json=_transcribe(RECORDING), headers=stack.headers(tenant=tenant)
    ) as response:
        assert response.status == 200, await response.read()
    async with http.post(
        f"{stack.edge_url}/chatkit/api",
        json=_transcribe(longer, "audio/ogg;codecs=opus"),
        headers=stack.headers(tenant=tenant, user="bob"),
    ) as response:
        assert response.status == 200, await response.read()
    first, second = _reported_tokens(RECORDING), _reported_tokens(longer, "audio/ogg")
    assert first == (len(RECORDING) // 100 + 1, 5) and second == (len(longer) // 100 + 1, 5)
    # Each user's tokens, under the transcription model's name, exactly as reported; dictation is
    # neither a conversation nor a turn.
    reply = await _usage(stack, tenant)
    assert _token_rows(reply) == [("alice", "whisper-test", *first), ("bob", "whisper-test", *second)]
    totals = reply.totals
    assert (totals.input_tokens, totals.output_tokens) == (first[0] + second[0], first[1] + second[1])
    assert (totals.conversations, totals.turns, totals.tool_calls) == (0, 0, 0)
    # The model metrics: two calls of the transcription model, by the configured provider.
    metrics_after = _model_tokens(stack, "whisper-test")
    assert tuple(after - before for after, before in zip(metrics_after, metrics_before, strict=True)) == (
        2,
        first[0] + second[0],
        first[1] + second[1],
    )
    # A refused recording spent nothing and counts nothing.
    status, _, _ = await _post(http, stack, _transcribe(b"REFUSE" + RECORDING), tenant)
    assert status == 400
    assert _token_rows(await _usage(stack, tenant)) == _token_rows(reply)
    assert _model_tokens(stack, "whisper-test")[1:] == metrics_after[1:]


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


# --------------------------------------------------------------------------- the token budget

PER_RECORDING = sum(_reported_tokens(RECORDING))
"""Tokens one dictation of RECORDING costs at the fake provider (33 in, 5 out)."""


@pytest.fixture(scope="module")
async def budgeted(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[Stack, FakeOpenAI]]:
    """The provider's stack with a default budget that one dictation leaves room in, two do not."""
    async with fake_openai_server() as fake:
        with running_stack(
            tmp_path_factory.mktemp("dictation-budget"),
            uploads=False,
            LLM_PROVIDER="openai",
            OPENAI_BASE_URL=fake.base_url,
            OPENAI_API_KEY="sk-test",
            SWITCHBOARD_TRANSCRIBE_MODEL="whisper-test",
            SWITCHBOARD_LIMIT_TOKENS_PER_DAY=str(PER_RECORDING + 1),
        ) as running:
            yield running, fake


async def test_a_dictation_that_crosses_the_budget_finishes_and_the_next_is_refused(
    http: aiohttp.ClientSession, budgeted: tuple[Stack, FakeOpenAI]
) -> None:
    stack, fake = budgeted
    tenant = "t-dictation-budget"
    transcript = f"heard {len(RECORDING)} bytes of audio/webm"
    for _ in range(2):  # the first leaves one token of the budget; the second crosses it
        status, raw, _ = await _post(http, stack, _transcribe(RECORDING), tenant)
        assert status == 200, raw[:300]
        assert json.loads(raw)["text"] == transcript
    used = await _usage(stack, tenant)
    tokens = _reported_tokens(RECORDING)
    assert _token_rows(used) == [("alice", "whisper-test", 2 * tokens[0], 2 * tokens[1])]
    # Used up: the next dictation is refused before the provider hears it, and records nothing.
    heard = len(fake.transcriptions)
    status, raw, headers = await _post(http, stack, _transcribe(RECORDING), tenant)
    _over_budget(status, raw, headers)
    assert len(fake.transcriptions) == heard
    assert _token_rows(await _usage(stack, tenant)) == _token_rows(used)
    # As a turn would be: the budget is the tenant's, whatever spent it.
    status, raw, headers = await _post(http, stack, request("threads.create", input=user_input("hi")), tenant)
    _over_budget(status, raw, headers)
    assert fake.requests == []
    # Over gRPC: RESOURCE_EXHAUSTED with the retry-after hint.
    async with aio.insecure_channel(stack.agent_address) as channel:
        with pytest.raises(aio.AioRpcError) as refused:
            await chat_pb2_grpc.ChatServiceStub(channel).Transcribe(
                chat_pb2.TranscribeRequest(audio=RECORDING, mime_type="audio/webm"),
                metadata=(("authorization", f"Bearer {stack.token(tenant=tenant, user='bob')}"),),
                timeout=10,
            )
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "(tokens_per_day)" in (refused.value.details() or "")
        assert int(dict(refused.value.trailing_metadata() or ())["retry-after"]) >= 1
    # Another tenant has a budget of its own.
    status, raw, _ = await _post(http, stack, _transcribe(RECORDING), "t-dictation-other")
    assert status == 200, raw[:300]


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


async def test_an_apps_own_transcription_is_not_refused_by_the_budget_and_counts_nothing(
    http: aiohttp.ClientSession, own_app: Stack
) -> None:
    tenant = "t-dictation-app"
    await _use_up_the_budget(own_app, tenant)
    before = await _usage(own_app, tenant)
    status, raw, _ = await _post(http, own_app, _transcribe(RECORDING), tenant)
    assert status == 200, raw[:300]
    assert json.loads(raw)["text"] == f"app heard {len(RECORDING)} bytes of audio/webm from alice@{tenant}"
    assert _token_rows(await _usage(own_app, tenant)) == _token_rows(before)
