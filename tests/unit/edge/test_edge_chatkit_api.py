"""POST /chatkit/api over real HTTP against a scripted agent on a real gRPC socket.

Covers: every ChatKit request type -> the right RPC and proto request; SSE framing and bytes; JSON
bodies; forwarded metadata and deadlines; 400/401/413 without any gRPC call; dictation.
"""

from __future__ import annotations

import base64
import re
import time
from typing import Any

import grpc
import pytest
from aiohttp import web
from chatkit.types import (
    Page,
    SyncCustomActionResponse,
    Thread,
    ThreadItem,
    ThreadStreamEvent,
    TranscriptionResult,
)
from google.protobuf import json_format, struct_pb2
from google.protobuf.message import Message
from pydantic import BaseModel, TypeAdapter

from services.common import codec
from services.common.auth import mint_token
from switchboard.v1 import chat_pb2, events_pb2, thread_pb2
from tests.unit.edge.conftest import SECRET, EdgeUnderTest, make_settings, running_edge
from tests.unit.edge.fake_agent import (
    ASSISTANT_MESSAGE,
    ITEM_PAGE,
    STREAM_OPTIONS,
    THREAD,
    THREAD_PAGE,
    THREAD_WITH_ITEMS,
    TURN_EVENTS,
    FakeAgent,
    to_events,
)

EVENT = TypeAdapter[ThreadStreamEvent](ThreadStreamEvent)
THREAD_ADAPTER = TypeAdapter[Thread](Thread)
THREAD_PAGE_ADAPTER = TypeAdapter[Page[Thread]](Page[Thread])
ITEM_PAGE_ADAPTER = TypeAdapter[Page[ThreadItem]](Page[ThreadItem])


def wire(model: BaseModel) -> bytes:
    """What ChatKitServer writes for a model."""
    return model.model_dump_json(
        by_alias=True, exclude_none=True, context={"exclude_metadata": True}
    ).encode()


def frames(body: bytes) -> list[bytes]:
    """The JSON payloads of an SSE body, asserting ChatKitServer's exact `data: <json>\\n\\n` framing."""
    if not body:
        return []
    assert body.endswith(b"\n\n"), body[-80:]
    payloads = []
    for frame in body[:-2].split(b"\n\n"):
        assert frame.startswith(b"data: "), frame[:80]
        payload = frame[len(b"data: ") :]
        assert b"\n" not in payload
        event = EVENT.validate_json(payload)
        assert wire(event) == payload, (payload, wire(event))
        payloads.append(payload)
    return payloads


def value(data: Any) -> struct_pb2.Value:
    return json_format.ParseDict(data, struct_pb2.Value())


def text_input(text: str) -> chat_pb2.UserMessageInput:
    return chat_pb2.UserMessageInput(
        content=[thread_pb2.UserMessageContent(input_text=thread_pb2.UserMessageTextContent(text=text))],
        inference_options=thread_pb2.InferenceOptions(),
    )


STREAMING_CASES: list[tuple[dict[str, Any], str, Message]] = [
    (
        {
            "type": "threads.create",
            "params": {
                "input": {
                    "content": [{"type": "input_text", "text": "hi"}],
                    "attachments": ["atc_1"],
                    "quoted_text": "q",
                    "inference_options": {"tool_choice": {"id": "search"}, "model": "gpt-x"},
                }
            },
        },
        "CreateThread",
        chat_pb2.CreateThreadRequest(
            input=chat_pb2.UserMessageInput(
                content=[
                    thread_pb2.UserMessageContent(input_text=thread_pb2.UserMessageTextContent(text="hi"))
                ],
                attachments=["atc_1"],
                quoted_text="q",
                inference_options=thread_pb2.InferenceOptions(
                    tool_choice=thread_pb2.ToolChoice(id="search"), model="gpt-x"
                ),
            )
        ),
    ),
    (
        {
            "type": "threads.add_user_message",
            "params": {
                "thread_id": "thr_1",
                "input": {
                    "content": [{"type": "input_text", "text": "again"}],
                    "attachments": [],
                    "inference_options": {},
                },
            },
        },
        "AddUserMessage",
        chat_pb2.AddUserMessageRequest(thread_id="thr_1", input=text_input("again")),
    ),
    (
        {"type": "threads.add_client_tool_output", "params": {"thread_id": "thr_1", "result": {"ok": True}}},
        "AddClientToolOutput",
        chat_pb2.AddClientToolOutputRequest(thread_id="thr_1", result=value({"ok": True})),
    ),
    (
        {
            "type": "threads.add_structured_input",
            "params": {
                "thread_id": "thr_1",
                "item_id": "si_1",
                "input": {
                    "status": "answered",
                    "answers": {"p": {"values": ["Low"]}, "n": {"skipped": True}},
                },
            },
        },
        "AddStructuredInput",
        chat_pb2.AddStructuredInputRequest(
            thread_id="thr_1",
            item_id="si_1",
            input=chat_pb2.StructuredInputSubmission(
                status="answered",
                answers={
                    "p": chat_pb2.StructuredInputAnswerSubmission(values=["Low"]),
                    "n": chat_pb2.StructuredInputAnswerSubmission(skipped=True),
                },
            ),
        ),
    ),
    (
        {"type": "threads.retry_after_item", "params": {"thread_id": "thr_1", "item_id": "msg_u"}},
        "RetryAfterItem",
        chat_pb2.RetryAfterItemRequest(thread_id="thr_1", item_id="msg_u"),
    ),
    (
        {
            "type": "threads.custom_action",
            "params": {
                "thread_id": "thr_1",
                "item_id": "wd_1",
                "action": {"type": "approve", "payload": {"id": 7}},
            },
        },
        "CustomAction",
        chat_pb2.CustomActionRequest(
            thread_id="thr_1",
            item_id="wd_1",
            action=chat_pb2.Action(type="approve", payload=value({"id": 7})),
        ),
    ),
]

UNARY_CASES: list[tuple[dict[str, Any], str, Message, bytes]] = [
    (
        {"type": "threads.get_by_id", "params": {"thread_id": "thr_1"}},
        "GetThread",
        chat_pb2.GetThreadRequest(thread_id="thr_1"),
        wire(THREAD_WITH_ITEMS),
    ),
    (
        {"type": "threads.list", "params": {"limit": 5, "order": "asc", "after": "thr_0"}},
        "ListThreads",
        chat_pb2.ListThreadsRequest(limit=5, order="asc", after="thr_0"),
        wire(THREAD_PAGE),
    ),
    (
        {"type": "threads.list", "params": {}},
        "ListThreads",
        chat_pb2.ListThreadsRequest(order="desc"),
        wire(THREAD_PAGE),
    ),
    (
        {"type": "threads.update", "params": {"thread_id": "thr_1", "title": "New title"}},
        "UpdateThread",
        chat_pb2.UpdateThreadRequest(thread_id="thr_1", title="New title"),
        wire(THREAD.model_copy(update={"title": "New title"})),
    ),
    (
        {"type": "threads.delete", "params": {"thread_id": "thr_1"}},
        "DeleteThread",
        chat_pb2.DeleteThreadRequest(thread_id="thr_1"),
        b"{}",
    ),
    (
        {
            "type": "items.list",
            "params": {"thread_id": "thr_1", "limit": 10, "order": "asc", "after": "msg_0"},
        },
        "ListItems",
        chat_pb2.ListItemsRequest(thread_id="thr_1", limit=10, order="asc", after="msg_0"),
        wire(ITEM_PAGE),
    ),
    (
        {
            "type": "items.feedback",
            "params": {"thread_id": "thr_1", "item_ids": ["msg_a"], "kind": "positive"},
        },
        "AddFeedback",
        chat_pb2.AddFeedbackRequest(thread_id="thr_1", item_ids=["msg_a"], kind="positive"),
        b"{}",
    ),
    (
        {
            "type": "threads.sync_custom_action",
            "params": {"thread_id": "thr_1", "action": {"type": "toggle"}},
        },
        "SyncCustomAction",
        chat_pb2.SyncCustomActionRequest(thread_id="thr_1", action=chat_pb2.Action(type="toggle")),
        wire(SyncCustomActionResponse(updated_item=ASSISTANT_MESSAGE)),
    ),
]

CREATE = STREAMING_CASES[0][0]
GET_THREAD = UNARY_CASES[0][0]


# --------------------------------------------------------------------------- mapping


@pytest.mark.parametrize(("body", "rpc", "expected"), STREAMING_CASES, ids=[c[1] for c in STREAMING_CASES])
async def test_streaming_requests_call_their_rpc_and_answer_sse(
    edge: EdgeUnderTest, agent: FakeAgent, body: dict[str, Any], rpc: str, expected: Message
) -> None:
    reply = await edge.post(body)
    assert reply.status == 200, reply.body
    assert [(r.rpc, r.request) for r in agent.servicer.received] == [(rpc, expected)]
    assert [r.method for r in agent.servicer.received] == ["Stream"]  # the batched RPC, always
    assert reply.headers["Content-Type"] == "text/event-stream"
    assert frames(reply.body) == [wire(STREAM_OPTIONS)]


@pytest.mark.parametrize(
    ("body", "rpc", "expected", "response"), UNARY_CASES, ids=[f"{c[0]['type']}" for c in UNARY_CASES]
)
async def test_unary_requests_call_their_rpc_and_answer_chatkit_json(
    edge: EdgeUnderTest, agent: FakeAgent, body: dict[str, Any], rpc: str, expected: Message, response: bytes
) -> None:
    reply = await edge.post(body)
    assert reply.status == 200, reply.body
    assert [(r.rpc, r.request) for r in agent.servicer.received] == [(rpc, expected)]
    assert reply.headers["Content-Type"] == "application/json"
    assert reply.body == response


async def test_json_responses_validate_against_chatkit_models(edge: EdgeUnderTest) -> None:
    thread = THREAD_ADAPTER.validate_json((await edge.post(GET_THREAD)).body)
    assert thread == THREAD_WITH_ITEMS
    assert [item.id for item in thread.items.data] == ["msg_u", "msg_a"]
    threads = THREAD_PAGE_ADAPTER.validate_json((await edge.post(UNARY_CASES[1][0])).body)
    assert threads == THREAD_PAGE
    items = ITEM_PAGE_ADAPTER.validate_json((await edge.post(UNARY_CASES[5][0])).body)
    assert items == ITEM_PAGE
    # ChatKitServer serialises threads.list as an unparametrised Page: same bytes.
    assert wire(Page(data=THREAD_PAGE.data, has_more=True, after="thr_2")) == wire(THREAD_PAGE)


async def test_a_sync_action_without_an_updated_item_answers_an_empty_object(
    edge: EdgeUnderTest, agent: FakeAgent
) -> None:
    agent.servicer.script.replies["SyncCustomAction"] = chat_pb2.SyncCustomActionResponse()
    reply = await edge.post(UNARY_CASES[-1][0])
    assert reply.status == 200
    assert reply.body == b"{}"


# --------------------------------------------------------------------------- SSE


async def test_a_whole_turn_streams_byte_for_byte_as_chatkit_server(
    edge: EdgeUnderTest, agent: FakeAgent
) -> None:
    agent.servicer.script.events = to_events(TURN_EVENTS)
    reply = await edge.post(CREATE)
    assert reply.status == 200
    assert reply.headers["Content-Type"] == "text/event-stream"
    assert reply.headers["Cache-Control"] == "no-cache"
    assert reply.headers["X-Accel-Buffering"] == "no"
    assert reply.body == b"".join(b"data: " + wire(model) + b"\n\n" for model in TURN_EVENTS)
    assert [EVENT.validate_json(payload) for payload in frames(reply.body)] == TURN_EVENTS


async def test_an_empty_stream_is_an_empty_200_event_stream(edge: EdgeUnderTest, agent: FakeAgent) -> None:
    agent.servicer.script.events = []
    reply = await edge.post(
        {"type": "threads.retry_after_item", "params": {"thread_id": "t", "item_id": "x"}}
    )
    assert reply.status == 200
    assert reply.headers["Content-Type"] == "text/event-stream"
    assert reply.body == b""


# --------------------------------------------------------------------------- metadata and deadlines


@pytest.mark.parametrize("body", [CREATE, GET_THREAD], ids=["stream", "unary"])
async def test_authorization_request_id_and_language_are_forwarded(
    edge: EdgeUnderTest, agent: FakeAgent, body: dict[str, Any]
) -> None:
    headers = edge.auth(**{"X-Request-Id": "req-42.a", "Accept-Language": "fr-CA"})
    reply = await edge.post(body, headers)
    assert reply.status == 200
    assert reply.headers["X-Request-Id"] == "req-42.a"
    metadata = agent.servicer.received[0].metadata
    assert metadata["authorization"] == f"Bearer {edge.token}"
    assert metadata["x-request-id"] == "req-42.a"
    assert metadata["accept-language"] == "fr-CA"


@pytest.mark.parametrize("given", [None, "has spaces in it", "x" * 200], ids=["absent", "spaces", "too-long"])
async def test_a_request_id_is_generated_when_absent_or_unusable(
    edge: EdgeUnderTest, agent: FakeAgent, given: str | None
) -> None:
    headers = edge.auth() if given is None else edge.auth(**{"X-Request-Id": given})
    reply = await edge.post(CREATE, headers)
    request_id = reply.headers["X-Request-Id"]
    assert re.fullmatch(r"[0-9a-f]{32}", request_id)
    assert agent.servicer.received[0].metadata["x-request-id"] == request_id
    assert "accept-language" not in agent.servicer.received[0].metadata


async def test_each_operation_gets_its_own_deadline(edge: EdgeUnderTest, agent: FakeAgent) -> None:
    await edge.post(CREATE)
    await edge.post(GET_THREAD)
    streaming, unary = (received.time_remaining for received in agent.servicer.received)
    assert streaming is not None
    # 50 s and 5 s in the test settings; the wire encoding of grpc-timeout may round up slightly.
    assert 45 < streaming < edge.settings.stream_timeout_s + 0.1
    assert unary is not None
    assert 4 < unary < edge.settings.rpc_timeout_s + 0.1


# --------------------------------------------------------------------------- refused before any RPC


@pytest.mark.parametrize(
    ("body", "hint"),
    [
        (b"{not json", "malformed JSON"),
        (b"[]", "object"),
        (b'{"type":"threads.nope","params":{}}', "unknown request type 'threads.nope'"),
        (b'{"params":{}}', "missing request 'type'"),
        (b'{"type":"threads.get_by_id","params":{"thread_id":5}}', "params.thread_id"),
        (b'{"type":"threads.create","params":{}}', "params.input: Field required"),
        (b'{"type":"threads.list","params":{"order":"sideways"}}', "params.order"),
        (b'{"type":"threads.list","params":{"limit":99999999999}}', "out of range"),
    ],
    ids=["malformed", "array", "unknown-type", "no-type", "wrong-type", "missing", "bad-literal", "int32"],
)
async def test_bad_requests_are_400_and_reach_no_rpc(
    edge: EdgeUnderTest, agent: FakeAgent, body: bytes, hint: str
) -> None:
    reply = await edge.post(body)
    assert reply.status == 400
    code, message = reply.error()
    assert code == "INVALID_ARGUMENT"
    assert hint in message
    assert len(message) < 300
    assert agent.servicer.received == []


def _expired() -> str:
    return mint_token(SECRET, tenant="acme", user="alice", ttl_s=-60)


def _wrong_secret() -> str:
    return mint_token("another-secret-" + "z" * 32, tenant="acme", user="alice")


@pytest.mark.parametrize(
    ("authorization", "challenge"),
    [
        (None, "Bearer"),
        ("Bearer garbage", 'Bearer error="invalid_token"'),
        ("Basic YWxpY2U6cHc=", 'Bearer error="invalid_token"'),
        ("expired", 'Bearer error="invalid_token"'),
        ("wrong-secret", 'Bearer error="invalid_token"'),
    ],
    ids=["missing", "garbage", "basic", "expired", "wrong-secret"],
)
async def test_bad_credentials_are_401_and_reach_no_rpc(
    edge: EdgeUnderTest, agent: FakeAgent, authorization: str | None, challenge: str
) -> None:
    tokens = {"expired": _expired, "wrong-secret": _wrong_secret}
    headers = {"Content-Type": "application/json"}
    if authorization in tokens:
        headers["Authorization"] = f"Bearer {tokens[authorization]()}"
    elif authorization is not None:
        headers["Authorization"] = authorization
    reply = await edge.post(CREATE, headers)
    assert reply.status == 401
    assert reply.headers["WWW-Authenticate"] == challenge
    assert reply.error()[0] == "UNAUTHENTICATED"
    assert re.fullmatch(r"[0-9a-f]{32}", reply.headers["X-Request-Id"])
    assert agent.servicer.received == []


async def test_an_oversized_body_is_413_and_reaches_no_rpc(agent: FakeAgent) -> None:
    async with running_edge(make_settings(agent.address, max_body_bytes=1024)) as edge:
        body = {**CREATE, "metadata": {"padding": "x" * 2000}}
        reply = await edge.post(body)
        assert reply.status == 413
        code, message = reply.error()
        assert code == "RESOURCE_EXHAUSTED"
        assert "1024" in message

        async def chunks() -> Any:  # no Content-Length: the limit is enforced while reading
            yield b'{"type":"threads.create","metadata":{"padding":"'
            for _ in range(4):
                yield b"y" * 512
            yield b'"}}'

        async with edge.session.post(
            edge.url + "/chatkit/api", data=chunks(), headers=edge.auth()
        ) as response:
            assert response.status == 413
            assert (await response.json())["error"]["code"] == "RESOURCE_EXHAUSTED"

        small = await edge.post(CREATE)
        assert small.status == 200
    assert [r.rpc for r in agent.servicer.received] == ["CreateThread"]


# --------------------------------------------------------------------------- dictation

AUDIO = bytes(range(256)) * 40  # 10 KiB, every byte value


def _transcribe(audio: bytes | str, mime_type: str = "audio/webm;codecs=opus") -> dict[str, Any]:
    encoded = audio if isinstance(audio, str) else base64.b64encode(audio).decode()
    return {"type": "input.transcribe", "params": {"audio_base64": encoded, "mime_type": mime_type}}


async def test_input_transcribe_is_one_transcribe_rpc_with_the_decoded_audio(
    edge: EdgeUnderTest, agent: FakeAgent
) -> None:
    reply = await edge.post(_transcribe(AUDIO))
    assert reply.status == 200, reply.body
    assert reply.headers["Content-Type"].startswith("application/json")
    assert reply.body == wire(TranscriptionResult(text="hello from the microphone"))
    assert TranscriptionResult.model_validate_json(reply.body).text == "hello from the microphone"
    [received] = agent.servicer.received
    assert received.rpc == "Transcribe"
    assert received.request == chat_pb2.TranscribeRequest(audio=AUDIO, mime_type="audio/webm;codecs=opus")
    assert received.metadata["authorization"] == f"Bearer {edge.token}"
    # The transcription deadline, not the 5 s of other unary calls.
    assert received.time_remaining is not None
    assert received.time_remaining > edge.settings.rpc_timeout_s


@pytest.mark.parametrize(
    ("body", "hint"),
    [
        (_transcribe("not base64!"), "audio_base64 is not valid base64"),
        (_transcribe("QUJ"), "audio_base64 is not valid base64"),
        (_transcribe(AUDIO, "audio/wav"), "unsupported audio type 'audio/wav'"),
        (_transcribe(AUDIO, ""), "unsupported audio type '(empty)'"),
        (_transcribe(b""), "the audio is empty"),
        ({"type": "input.transcribe", "params": {"mime_type": "audio/ogg"}}, "params.audio_base64"),
    ],
    ids=["not-base64", "bad-padding", "wav", "no-type", "empty", "missing-audio"],
)
async def test_bad_dictation_is_400_and_reaches_no_rpc(
    edge: EdgeUnderTest, agent: FakeAgent, body: dict[str, Any], hint: str
) -> None:
    reply = await edge.post(body)
    assert reply.status == 400
    code, message = reply.error()
    assert code == "INVALID_ARGUMENT"
    assert hint in message
    assert agent.servicer.received == []


@pytest.mark.parametrize("mime_type", ["audio/webm", "audio/ogg;codecs=opus", "audio/mp4", "AUDIO/MP4"])
async def test_the_protocols_media_types_are_accepted(
    edge: EdgeUnderTest, agent: FakeAgent, mime_type: str
) -> None:
    assert (await edge.post(_transcribe(AUDIO, mime_type))).status == 200


async def test_dictation_may_exceed_the_body_limit_up_to_its_own(agent: FakeAgent) -> None:
    settings = make_settings(agent.address, max_body_bytes=1024, transcribe_max_bytes=30_000)
    async with running_edge(settings) as edge:
        # 20 KB of audio: 27 KB of JSON, over max_body_bytes, within the dictation limit.
        reply = await edge.post(_transcribe(AUDIO * 2))
        assert reply.status == 200, reply.body
        # Other operations keep max_body_bytes, even when their body is a valid request.
        padded = await edge.post({**CREATE, "metadata": {"padding": "x" * 20_000}})
        assert padded.status == 413
        assert "1024" in padded.error()[1]
        # Audio over the dictation limit: 400 (decoded) or 413 (the body itself is too large).
        over = await edge.post(_transcribe(AUDIO * 3 + b"x"))
        assert over.status == 400
        assert "more than the limit of 30000 bytes" in over.error()[1]
        huge = await edge.post(_transcribe(AUDIO * 10))
        assert huge.status == 413
        assert huge.error()[0] == "RESOURCE_EXHAUSTED"
    assert [r.rpc for r in agent.servicer.received] == ["Transcribe"]


async def test_a_failing_transcription_is_a_503_that_names_dictation(
    edge: EdgeUnderTest, agent: FakeAgent
) -> None:
    agent.servicer.script.fail = (grpc.StatusCode.UNAVAILABLE, "provider at 10.0.0.7 answered HTTP 500")
    reply = await edge.post(_transcribe(AUDIO))
    assert reply.status == 503
    code, message = reply.error()
    assert code == "UNAVAILABLE"
    assert message == "dictation is unavailable right now; try again later"
    agent.servicer.script.fail = (grpc.StatusCode.INVALID_ARGUMENT, "the provider refused the audio: bad")
    reply = await edge.post(_transcribe(AUDIO))
    assert reply.status == 400
    assert reply.error() == ("INVALID_ARGUMENT", "the provider refused the audio: bad")


# --------------------------------------------------------------------------- batches


@pytest.mark.parametrize("empty_batches", [False, True], ids=["batches", "with-empty-messages"])
async def test_the_frames_of_a_batch_go_out_in_one_write(
    edge: EdgeUnderTest, agent: FakeAgent, monkeypatch: pytest.MonkeyPatch, empty_batches: bool
) -> None:
    writes: list[bytes] = []
    write = web.StreamResponse.write

    async def recording(self: web.StreamResponse, data: bytes | bytearray | memoryview) -> None:
        writes.append(bytes(data))
        await write(self, data)

    monkeypatch.setattr(web.StreamResponse, "write", recording)
    agent.servicer.script.events = to_events(TURN_EVENTS)
    agent.servicer.script.batch_size = 4
    agent.servicer.script.empty_batches = empty_batches
    reply = await edge.post(CREATE)
    assert reply.status == 200
    assert frames(reply.body) == [wire(event) for event in TURN_EVENTS]  # every event, in order
    sse = [chunk for chunk in writes if chunk.startswith(b"data: ")]
    assert [len(frames(chunk)) for chunk in sse] == [4, 4, 3]
    assert b"".join(sse) == reply.body


# --------------------------------------------------------------------------- invalid agent output


async def test_an_invalid_first_event_is_a_500(edge: EdgeUnderTest, agent: FakeAgent) -> None:
    agent.servicer.script.events = [events_pb2.ThreadStreamEvent()]
    reply = await edge.post(CREATE)
    assert reply.status == 500
    assert reply.error()[0] == "INTERNAL"


@pytest.mark.parametrize("batch_size", [1, 3], ids=["in-a-later-batch", "in-the-first-batch"])
async def test_an_invalid_later_event_ends_the_stream_with_a_retryable_error(
    edge: EdgeUnderTest, agent: FakeAgent, batch_size: int
) -> None:
    agent.servicer.script.batch_size = batch_size
    agent.servicer.script.events = [*to_events([STREAM_OPTIONS]), events_pb2.ThreadStreamEvent()]
    reply = await edge.post(CREATE)
    assert reply.status == 200
    assert frames(reply.body) == [
        wire(STREAM_OPTIONS),
        b'{"type":"error","code":"stream.error","allow_retry":true}',
    ]


async def test_an_invalid_unary_reply_is_a_500(edge: EdgeUnderTest, agent: FakeAgent) -> None:
    agent.servicer.script.replies["GetThread"] = thread_pb2.Thread(id="thr_1")  # no created_at
    reply = await edge.post(GET_THREAD)
    assert reply.status == 500
    code, message = reply.error()
    assert code == "INTERNAL"
    assert "invalid" in message


# --------------------------------------------------------------------------- speed


async def test_a_stream_of_many_deltas_is_fast(edge: EdgeUnderTest, agent: FakeAgent) -> None:
    delta = codec.event_to_proto(TURN_EVENTS[5])
    agent.servicer.script.events = [delta] * 1000
    started = time.perf_counter()
    reply = await edge.post(CREATE)
    elapsed = time.perf_counter() - started
    assert reply.status == 200
    assert reply.body.count(b"data: ") == 1000
    assert elapsed < 1.5
