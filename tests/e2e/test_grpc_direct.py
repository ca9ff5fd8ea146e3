"""An internal caller uses the agent service over gRPC with typed messages and no edge."""

from __future__ import annotations

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from switchboard.v1 import chat_pb2, chat_pb2_grpc, thread_pb2
from tests.support.processes import Stack


def _input(text: str) -> chat_pb2.UserMessageInput:
    return chat_pb2.UserMessageInput(
        content=[thread_pb2.UserMessageContent(input_text=thread_pb2.UserMessageTextContent(text=text))],
        inference_options=thread_pb2.InferenceOptions(),
    )


def _auth(stack: Stack, **who: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {stack.token(**who)}"), ("x-request-id", "grpc-test-1"))


async def test_internal_caller_chats_and_reads_history(stack: Stack) -> None:
    async with aio.insecure_channel(stack.agent_address) as channel:
        stub = chat_pb2_grpc.ChatServiceStub(channel)
        meta = _auth(stack, user="internal-service")
        events = [
            e
            async for e in stub.CreateThread(
                chat_pb2.CreateThreadRequest(input=_input("My name is Grace. Any invoice issues?")),
                metadata=meta,
                timeout=30,
            )
        ]
        kinds = [e.WhichOneof("kind") for e in events]
        assert kinds[:3] == ["thread_created", "thread_item_done", "stream_options"]
        thread_id = events[0].thread_created.thread.id
        text = "".join(
            e.thread_item_updated.update.assistant_message_content_part_text_delta.delta
            for e in events
            if e.WhichOneof("kind") == "thread_item_updated"
        )
        assert text

        follow = [
            e
            async for e in stub.AddUserMessage(
                chat_pb2.AddUserMessageRequest(thread_id=thread_id, input=_input("What is my name?")),
                metadata=meta,
                timeout=30,
            )
        ]
        answers = [
            e.thread_item_done.item.assistant_message
            for e in follow
            if e.WhichOneof("kind") == "thread_item_done"
            and e.thread_item_done.item.WhichOneof("kind") == "assistant_message"
        ]
        assert "Grace" in answers[-1].content[0].text

        threads = await stub.ListThreads(chat_pb2.ListThreadsRequest(limit=5), metadata=meta)
        assert thread_id in [t.id for t in threads.data]
        thread = await stub.GetThread(chat_pb2.GetThreadRequest(thread_id=thread_id), metadata=meta)
        assert thread.title and thread.items.data[0].WhichOneof("kind") == "user_message"
        items = await stub.ListItems(
            chat_pb2.ListItemsRequest(thread_id=thread_id, order="asc", limit=50), metadata=meta
        )
        assert [i.WhichOneof("kind") for i in items.data].count("user_message") == 2


async def test_grpc_auth_and_tenancy(stack: Stack) -> None:
    async with aio.insecure_channel(stack.agent_address) as channel:
        stub = chat_pb2_grpc.ChatServiceStub(channel)
        with pytest.raises(aio.AioRpcError) as missing:
            await stub.ListThreads(chat_pb2.ListThreadsRequest())
        assert missing.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(aio.AioRpcError) as bad:
            async for _ in stub.CreateThread(
                chat_pb2.CreateThreadRequest(input=_input("x")), metadata=(("authorization", "Bearer junk"),)
            ):
                pass
        assert bad.value.code() == grpc.StatusCode.UNAUTHENTICATED

        events = [
            e
            async for e in stub.CreateThread(
                chat_pb2.CreateThreadRequest(input=_input("hello")), metadata=_auth(stack)
            )
        ]
        thread_id = events[0].thread_created.thread.id
        with pytest.raises(aio.AioRpcError) as foreign:
            await stub.GetThread(
                chat_pb2.GetThreadRequest(thread_id=thread_id), metadata=_auth(stack, tenant="globex")
            )
        assert foreign.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(aio.AioRpcError) as empty:
            await stub.GetThread(chat_pb2.GetThreadRequest(), metadata=_auth(stack))
        assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_health_and_reflection_are_open(stack: Stack) -> None:
    async with aio.insecure_channel(stack.agent_address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "switchboard.v1.ChatService"):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = reflect.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        names = [s.name async for r in responses for s in r.list_services_response.service]
        assert "switchboard.v1.ChatService" in names


async def test_deadline_cancels_the_run(stack: Stack) -> None:
    async with aio.insecure_channel(stack.agent_address) as channel:
        stub = chat_pb2_grpc.ChatServiceStub(channel)
        call = stub.CreateThread(
            chat_pb2.CreateThreadRequest(input=_input("tell me a long story about invoices")),
            metadata=_auth(stack),
            timeout=0.001,
        )
        with pytest.raises(aio.AioRpcError) as expired:
            async for _ in call:
                pass
        assert expired.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
