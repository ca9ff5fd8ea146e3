"""The agent service's gRPC boundary: domain errors become their status (a busy thread with a
`retry-after` hint), anything unexpected is INTERNAL with a generic message and a log line that
names the request id."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc import aio

from services.agent_service.server import ChatService
from services.agent_service.store import ThreadBusy
from services.common.auth import TokenVerifier, mint_token
from services.common.grpc_auth import AuthInterceptor
from switchboard.v1 import chat_pb2, chat_pb2_grpc

SECRET = "boundary-test-secret-" + "s" * 32
SECRET_DETAIL = "password=hunter2 at /srv/secret/path.py"


class ExplodingConversation:
    """Every operation fails the way the test asks."""

    def __init__(self) -> None:
        self.error: BaseException = RuntimeError(SECRET_DETAIL)

    async def get_thread(self, *args: Any, **kwargs: Any) -> Any:
        raise self.error

    def create_thread(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        error = self.error

        async def events() -> AsyncIterator[Any]:
            raise error
            yield  # pragma: no cover

        return events()

    def add_user_message(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        raise self.error  # fails before the stream exists


@pytest.fixture
async def chat() -> AsyncIterator[tuple[chat_pb2_grpc.ChatServiceStub, ExplodingConversation]]:
    conversation = ExplodingConversation()
    server = aio.server(interceptors=[AuthInterceptor(TokenVerifier(SECRET))])
    chat_pb2_grpc.add_ChatServiceServicer_to_server(ChatService(conversation), server)  # type: ignore[arg-type]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield chat_pb2_grpc.ChatServiceStub(channel), conversation
    finally:
        await server.stop(None)


def _metadata() -> tuple[tuple[str, str], ...]:
    token = mint_token(SECRET, tenant="acme", user="alice")
    return (("authorization", f"Bearer {token}"), ("x-request-id", "req-boom-1"))


def _input() -> chat_pb2.UserMessageInput:
    message = chat_pb2.UserMessageInput()
    message.content.add().input_text.text = "hi"
    return message


async def _stream_error(call: Any) -> aio.AioRpcError:
    with pytest.raises(aio.AioRpcError) as caught:
        async for _ in call:
            pass
    return caught.value


async def test_an_unexpected_exception_is_internal_with_a_generic_message(
    chat: tuple[chat_pb2_grpc.ChatServiceStub, ExplodingConversation], caplog: pytest.LogCaptureFixture
) -> None:
    stub, _ = chat
    caplog.set_level(logging.ERROR)
    with pytest.raises(aio.AioRpcError) as unary:
        await stub.GetThread(chat_pb2.GetThreadRequest(thread_id="thr_1"), metadata=_metadata())
    streamed = await _stream_error(
        stub.CreateThread(chat_pb2.CreateThreadRequest(input=_input()), metadata=_metadata())
    )
    early = await _stream_error(
        stub.AddUserMessage(
            chat_pb2.AddUserMessageRequest(thread_id="thr_1", input=_input()), metadata=_metadata()
        )
    )
    for error in (unary.value, streamed, early):
        assert error.code() == grpc.StatusCode.INTERNAL
        assert error.details() == "internal error"
        assert "hunter2" not in str(error.debug_error_string())
    failures = [record for record in caplog.records if "req-boom-1" in record.getMessage()]
    assert len(failures) == 3
    assert all(record.exc_info is not None for record in failures)


async def test_a_busy_thread_is_aborted_with_a_retry_after_hint(
    chat: tuple[chat_pb2_grpc.ChatServiceStub, ExplodingConversation],
) -> None:
    stub, conversation = chat
    conversation.error = ThreadBusy("thr_1", retry_after_s=14.2)
    with pytest.raises(aio.AioRpcError) as unary:
        await stub.GetThread(chat_pb2.GetThreadRequest(thread_id="thr_1"), metadata=_metadata())
    streamed = await _stream_error(
        stub.CreateThread(chat_pb2.CreateThreadRequest(input=_input()), metadata=_metadata())
    )
    for error in (unary.value, streamed):
        assert error.code() == grpc.StatusCode.ABORTED
        assert ("retry-after", "15") in tuple(error.trailing_metadata() or ())
    conversation.error = ThreadBusy("thr_1")  # no hint, no metadata
    with pytest.raises(aio.AioRpcError) as plain:
        await stub.GetThread(chat_pb2.GetThreadRequest(thread_id="thr_1"), metadata=_metadata())
    assert plain.value.code() == grpc.StatusCode.ABORTED
    assert all(key != "retry-after" for key, _ in plain.value.trailing_metadata() or ())
