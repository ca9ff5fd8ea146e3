"""The workload: ChatKit conversations over HTTP/SSE or gRPC, each read to the end of its stream.

A conversation is a `threads.create` and, in the two-turn variant, a `threads.add_user_message` on
the thread it created. Each turn is one stream; what a turn records:

- time to first text delta (from just before the request is sent to the arrival of the first
  `assistant_message.content_part.text_delta`);
- the assistant text bytes its deltas carried;
- the arrival time and text of every text delta, and how many events (SSE `data:` frames, gRPC
  messages) the stream carried: the paced scenario's delivery lag per token
  (`benchmarks.paced`) is computed from them;
- whether it is correct: HTTP 200 (or gRPC OK), no `error` event, the deltas concatenate to the
  final text of the assistant message (`thread.item.done`), and that text is the expected answer of
  the benchmark model. Anything else counts as an error.

The readers do the least a real client must: find frame boundaries, decode the JSON of the text
deltas and of the frames they need (thread id, final text) and skip the rest unparsed, so the
client's own cost stays small and the same for every HTTP system.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import aiohttp
from grpc import aio

from switchboard.v1 import chat_pb2, chat_pb2_grpc, events_pb2, thread_pb2

USER_TEXT: Final = "Hello! Please answer with your benchmark reply."
SECOND_TEXT: Final = "Thanks. One more answer, please."
CHATKIT_PATH: Final = "/chatkit/api"
TURN_TIMEOUT_S: Final = 180.0

_DATA: Final = b"data: "
_DELTA_TAG: Final = b'"assistant_message.content_part.text_delta"'
_CREATED_HEAD: Final = b'data: {"type":"thread.created"'
_DONE_HEAD: Final = b'data: {"type":"thread.item.done"'
_ERROR_HEAD: Final = b'data: {"type":"error"'
_ASSISTANT_TAG: Final = b'"type":"assistant_message"'


def user_input(text: str) -> dict[str, Any]:
    return {"content": [{"type": "input_text", "text": text}], "attachments": [], "inference_options": {}}


def create_body(text: str = USER_TEXT) -> bytes:
    return json.dumps({"type": "threads.create", "params": {"input": user_input(text)}}).encode()


def add_message_body(thread_id: str, text: str = SECOND_TEXT) -> bytes:
    body = {"type": "threads.add_user_message", "params": {"thread_id": thread_id, "input": user_input(text)}}
    return json.dumps(body).encode()


@dataclass(slots=True)
class TurnResult:
    """One stream as the client saw it."""

    ttft_s: float | None = None
    text_bytes: int = 0
    deltas: int = 0
    events: int = 0
    """Events on the wire: SSE `data:` frames, or gRPC messages."""
    thread_id: str | None = None
    final_text: str | None = None
    error: str | None = None
    _parts: list[str] = field(default_factory=list, repr=False)
    _delta_times: list[float] = field(default_factory=list, repr=False)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def delta_texts(self) -> list[str]:
        """The text of every delta, in order."""
        return self._parts

    @property
    def delta_times(self) -> list[float]:
        """When each delta arrived (`time.perf_counter()` of the read that brought it)."""
        return self._delta_times

    def delta(self, text: str, now: float, started: float) -> None:
        if self.ttft_s is None:
            self.ttft_s = now - started
        self._parts.append(text)
        self._delta_times.append(now)
        self.deltas += 1
        self.text_bytes += len(text.encode())

    def check(self, expected_text: str) -> None:
        """Mark the turn failed unless it delivered exactly the expected answer, deltas included."""
        if self.error is not None:
            return
        streamed = "".join(self._parts)
        if self.final_text is None:
            self.error = "no assistant message"
        elif streamed != self.final_text:
            self.error = "the deltas do not add up to the final text"
        elif self.final_text != expected_text:
            self.error = "unexpected answer"
        elif self.ttft_s is None:
            self.error = "no text delta"


class SseTurnReader:
    """Incremental reader of one ChatKit SSE body (`data: <json>\\n\\n` frames)."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.result = TurnResult()
        self._buffer = b""

    def feed(self, chunk: bytes, now: float) -> None:
        self._buffer += chunk
        if b"\n\n" not in self._buffer:
            return
        *frames, self._buffer = self._buffer.split(b"\n\n")
        for frame in frames:
            self._frame(frame, now)

    def close(self) -> TurnResult:
        if self._buffer and self.result.error is None:
            self.result.error = "the stream ended inside a frame"
        return self.result

    def _frame(self, frame: bytes, now: float) -> None:
        result = self.result
        if not frame.startswith(_DATA):
            result.error = result.error or f"not an SSE data frame: {frame[:60]!r}"
            return
        result.events += 1
        if _DELTA_TAG in frame:
            result.delta(json.loads(frame[6:])["update"]["delta"], now, self.started)
        elif frame.startswith(_DONE_HEAD):
            if _ASSISTANT_TAG in frame:
                item = json.loads(frame[6:])["item"]
                result.final_text = "".join(part["text"] for part in item["content"])
        elif frame.startswith(_CREATED_HEAD):
            result.thread_id = json.loads(frame[6:])["thread"]["id"]
        elif frame.startswith(_ERROR_HEAD):
            result.error = result.error or f"error event: {frame[6:200].decode(errors='replace')}"


class Driver(Protocol):
    """How one system is spoken to: one turn of a conversation."""

    async def turn(self, thread_id: str | None) -> TurnResult: ...


class HttpDriver:
    """ChatKit over HTTP: `POST /chatkit/api`, the answer read as SSE."""

    def __init__(
        self, session: aiohttp.ClientSession, base_url: str, headers: dict[str, str], expected_text: str
    ) -> None:
        self._session = session
        self._url = base_url + CHATKIT_PATH
        self._headers = {**headers, "Content-Type": "application/json", "Accept": "text/event-stream"}
        self._expected = expected_text
        self._create = create_body()

    async def turn(self, thread_id: str | None) -> TurnResult:
        body = self._create if thread_id is None else add_message_body(thread_id)
        started = time.perf_counter()
        reader = SseTurnReader(started)
        try:
            async with self._session.post(self._url, data=body, headers=self._headers) as response:
                if response.status != 200:
                    text = (await response.read())[:200].decode(errors="replace")
                    return TurnResult(error=f"HTTP {response.status}: {text}")
                async for chunk in response.content.iter_any():
                    reader.feed(chunk, time.perf_counter())
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            return TurnResult(error=f"{type(error).__name__}: {error}")
        result = reader.close()
        if thread_id is not None:
            result.thread_id = thread_id
        result.check(self._expected)
        return result


def grpc_input(text: str) -> chat_pb2.UserMessageInput:
    content = thread_pb2.UserMessageContent(input_text=thread_pb2.UserMessageTextContent(text=text))
    return chat_pb2.UserMessageInput(content=[content], inference_options=thread_pb2.InferenceOptions())


class GrpcDriver:
    """The agent service's ChatService over one shared gRPC channel, as an internal caller: every
    turn through `ChatService.Stream`, the events that were ready together in one message."""

    def __init__(self, channel: aio.Channel, token: str, expected_text: str) -> None:
        self._stub = chat_pb2_grpc.ChatServiceStub(channel)
        self._metadata = (("authorization", f"Bearer {token}"),)
        self._expected = expected_text
        self._create = chat_pb2.StreamRequest(
            create_thread=chat_pb2.CreateThreadRequest(input=grpc_input(USER_TEXT))
        )

    async def turn(self, thread_id: str | None) -> TurnResult:
        started = time.perf_counter()
        result = TurnResult(thread_id=thread_id)
        if thread_id is None:
            request = self._create
        else:
            request = chat_pb2.StreamRequest(
                add_user_message=chat_pb2.AddUserMessageRequest(
                    thread_id=thread_id, input=grpc_input(SECOND_TEXT)
                )
            )
        call = self._stub.Stream(request, metadata=self._metadata, timeout=TURN_TIMEOUT_S)
        try:
            async for batch in call:
                now = time.perf_counter()
                for event in batch.events:
                    read_grpc_event(result, event, now, started)
        except aio.AioRpcError as error:
            return TurnResult(error=f"gRPC {error.code().name}: {error.details()}")
        result.check(self._expected)
        return result


def read_grpc_event(
    result: TurnResult, event: events_pb2.ThreadStreamEvent, now: float, started: float
) -> None:
    result.events += 1
    kind = event.WhichOneof("kind")
    if kind == "thread_item_updated":
        update = event.thread_item_updated.update
        if update.WhichOneof("kind") == "assistant_message_content_part_text_delta":
            result.delta(update.assistant_message_content_part_text_delta.delta, now, started)
    elif kind == "thread_item_done":
        item = event.thread_item_done.item
        if item.WhichOneof("kind") == "assistant_message":
            result.final_text = "".join(part.text for part in item.assistant_message.content)
    elif kind == "thread_created":
        result.thread_id = event.thread_created.thread.id
    elif kind == "error":
        result.error = result.error or f"error event: {event.error}"
