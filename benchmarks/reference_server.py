"""The comparison baseline: a minimal, correct openai-chatkit server, as the official docs teach it.

This is NOT Switchboard. It is what a team would write from the openai-chatkit documentation: a
`ChatKitServer` subclass whose `respond` runs an Agents SDK agent with `Runner.run_streamed` and
turns its events into ChatKit events with `chatkit.agents.stream_agent_response`; the thread history
becomes model input with `simple_to_agent_input`; threads and items live in an in-memory `Store`;
one aiohttp process serves `POST /chatkit` with `server.process(...)` (SSE for streaming results,
JSON otherwise). The agent runs on the same model as Switchboard in the benchmark: the local demo
model in benchmark mode (`BenchmarkModel(N)`, `switchboard.demo.benchmark`), so both systems stream
the same answer; with `--tokens-per-s R` (default: `SWITCHBOARD_LOCAL_TOKENS_PER_S`, as Switchboard
reads it) the same model paces it at R tokens per second, so both face the same token timing.

Run it: `python -m benchmarks.reference_server --port 8091 --reply-tokens 64 [--tokens-per-s 50]`.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import AsyncIterator
from typing import Any, Final

from agents import Agent, Runner, set_tracing_disabled
from aiohttp import web
from chatkit.agents import AgentContext, simple_to_agent_input, stream_agent_response
from chatkit.server import ChatKitServer, StreamingResult
from chatkit.store import NotFoundError, Store
from chatkit.types import (
    Attachment,
    Page,
    ThreadItem,
    ThreadMetadata,
    ThreadStreamEvent,
    UserMessageItem,
)

from switchboard.demo.benchmark import BenchmarkModel, tokens_per_s_from_environment

RequestContext = dict[str, Any]
HISTORY_ITEMS: Final = 20
CHATKIT_PATH: Final = "/chatkit/api"


class MemoryStore(Store[RequestContext]):
    """Threads, items and attachments in dictionaries (the docs' in-memory store, in full)."""

    def __init__(self) -> None:
        self.threads: dict[str, ThreadMetadata] = {}
        self.items: dict[str, list[ThreadItem]] = {}
        self.attachments: dict[str, Attachment] = {}

    async def load_thread(self, thread_id: str, context: RequestContext) -> ThreadMetadata:
        try:
            return self.threads[thread_id].model_copy(deep=True)
        except KeyError:
            raise NotFoundError(f"Thread {thread_id} not found") from None

    async def save_thread(self, thread: ThreadMetadata, context: RequestContext) -> None:
        self.threads[thread.id] = thread.model_copy(deep=True)
        self.items.setdefault(thread.id, [])

    async def load_thread_items(
        self, thread_id: str, after: str | None, limit: int, order: str, context: RequestContext
    ) -> Page[ThreadItem]:
        items = list(self.items.get(thread_id, []))
        if order == "desc":
            items.reverse()
        start = 0
        if after is not None:
            start = next((index + 1 for index, item in enumerate(items) if item.id == after), len(items))
        page = items[start : start + limit]
        has_more = start + limit < len(items)
        return Page(data=page, has_more=has_more, after=page[-1].id if has_more and page else None)

    async def save_attachment(self, attachment: Attachment, context: RequestContext) -> None:
        self.attachments[attachment.id] = attachment

    async def load_attachment(self, attachment_id: str, context: RequestContext) -> Attachment:
        try:
            return self.attachments[attachment_id]
        except KeyError:
            raise NotFoundError(f"Attachment {attachment_id} not found") from None

    async def delete_attachment(self, attachment_id: str, context: RequestContext) -> None:
        self.attachments.pop(attachment_id, None)

    async def load_threads(
        self, limit: int, after: str | None, order: str, context: RequestContext
    ) -> Page[ThreadMetadata]:
        threads = sorted(self.threads.values(), key=lambda t: t.created_at, reverse=order == "desc")
        start = 0
        if after is not None:
            start = next((i + 1 for i, thread in enumerate(threads) if thread.id == after), len(threads))
        page = threads[start : start + limit]
        has_more = start + limit < len(threads)
        return Page(data=page, has_more=has_more, after=page[-1].id if has_more and page else None)

    async def add_thread_item(self, thread_id: str, item: ThreadItem, context: RequestContext) -> None:
        await self.save_item(thread_id, item, context)

    async def save_item(self, thread_id: str, item: ThreadItem, context: RequestContext) -> None:
        items = self.items.setdefault(thread_id, [])
        for index, existing in enumerate(items):
            if existing.id == item.id:
                items[index] = item.model_copy(deep=True)
                return
        items.append(item.model_copy(deep=True))

    async def load_item(self, thread_id: str, item_id: str, context: RequestContext) -> ThreadItem:
        for item in self.items.get(thread_id, []):
            if item.id == item_id:
                return item.model_copy(deep=True)
        raise NotFoundError(f"Item {item_id} not found")

    async def delete_thread(self, thread_id: str, context: RequestContext) -> None:
        self.threads.pop(thread_id, None)
        self.items.pop(thread_id, None)

    async def delete_thread_item(self, thread_id: str, item_id: str, context: RequestContext) -> None:
        self.items[thread_id] = [item for item in self.items.get(thread_id, []) if item.id != item_id]


class ReferenceChatKitServer(ChatKitServer[RequestContext]):
    """`respond` as in the openai-chatkit docs: history → agent input → run → stream_agent_response."""

    def __init__(self, store: MemoryStore, reply_tokens: int, tokens_per_s: float | None = None) -> None:
        super().__init__(store)
        self.agent = Agent[AgentContext[RequestContext]](
            name="Assistant",
            instructions="You are a helpful assistant.",
            model=BenchmarkModel(reply_tokens, tokens_per_s),
        )

    async def respond(
        self, thread: ThreadMetadata, input_user_message: UserMessageItem | None, context: RequestContext
    ) -> AsyncIterator[ThreadStreamEvent]:
        agent_context = AgentContext[RequestContext](thread=thread, store=self.store, request_context=context)
        page = await self.store.load_thread_items(thread.id, None, HISTORY_ITEMS, "desc", context)
        input_items = await simple_to_agent_input(list(reversed(page.data)))
        result = Runner.run_streamed(self.agent, input_items, context=agent_context)
        async for event in stream_agent_response(agent_context, result):
            yield event


def create_app(reply_tokens: int, tokens_per_s: float | None = None) -> web.Application:
    """`POST /chatkit/api` → `server.process(body, context)`; `GET /healthz` for the harness. The
    answer is paced at `tokens_per_s` when given."""
    set_tracing_disabled(True)  # offline: the default exporter would try to upload traces
    server = ReferenceChatKitServer(MemoryStore(), reply_tokens, tokens_per_s)

    async def chatkit(request: web.Request) -> web.StreamResponse:
        result = await server.process(await request.read(), {})
        if isinstance(result, StreamingResult):
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            async for chunk in result:
                await response.write(chunk)
            await response.write_eof()
            return response
        return web.Response(body=result.json, content_type="application/json")

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_post(CHATKIT_PATH, chatkit)
    app.router.add_get("/healthz", healthz)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8091)
    parser.add_argument("--reply-tokens", type=int, default=64)
    parser.add_argument(
        "--tokens-per-s",
        type=float,
        default=None,
        help="stream every answer at this many tokens per second (default: SWITCHBOARD_LOCAL_TOKENS_PER_S, "
        "else no pacing)",
    )
    args = parser.parse_args(argv)
    tokens_per_s = args.tokens_per_s if args.tokens_per_s is not None else tokens_per_s_from_environment()
    logging.basicConfig(level=logging.WARNING)
    app = create_app(args.reply_tokens, tokens_per_s)
    web.run_app(app, host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
