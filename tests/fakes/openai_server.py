"""A small fake OpenAI-compatible server: `POST /v1/chat/completions`, streamed and not, and
`POST /v1/audio/transcriptions` (multipart, as the `openai` client sends it).

It is a real aiohttp server on 127.0.0.1 (port chosen by the OS), so the code under test goes
through the real `openai` client, its HTTP transport and the Agents SDK's Chat Completions stream
handler, exactly as against OpenAI, Gemini's compatibility endpoint or a local vLLM/Ollama.

Policy (deterministic, per request):
1. a tool result (other than a handoff's) follows the newest user message → answer
   `Tool said: <result>`;
2. the user text mentions an employee id (`E1001`) and `lookup_employee` is offered → call it;
3. only handoff tools (`transfer_to_*`) are offered (the router) → call the handoff whose name
   contains `billing` / `tech` when the text has one of their keywords, else the `general` one;
4. otherwise answer `Echo: <user text>`.
Text is streamed word by word; tool calls are streamed as a first chunk with id and name followed
by several argument fragments, as OpenAI does. Every request body is recorded in `requests`.

Every completion reports the usage `USAGE` (distinct numbers that tests can find in the metrics): in
the reply, or for streams in a last chunk without choices when the request asks for it with
`stream_options.include_usage`, as OpenAI does.

Transcriptions are recorded in `transcriptions` (model, file name, content type, bytes) and answer
`{"text": "heard <n> bytes of <content type>", "usage": ...}`; audio that starts with `REFUSE` gets
OpenAI's 400 error body (bad audio), audio that starts with `FAIL` a 500. The usage is what
`transcription_usage` says (`transcription_usage_of` computes it), as OpenAI's `Transcription.usage`:
- "tokens" (the default, as gpt-4o-transcribe models report it): `{"type": "tokens",
  "input_tokens": <bytes> // 100 + 1, "output_tokens": <words of the text>, "total_tokens": ...}`,
  so `n` bytes of audio cost `n // 100 + 1 + 5` tokens (the text has 5 words);
- "duration" (as whisper-1 reports it): `{"type": "duration", "seconds": <bytes> / 1000}`;
- "none": no `usage` at all (as some compatible servers answer).
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import BodyPartReader, web

USAGE = {"prompt_tokens": 17, "completion_tokens": 5, "total_tokens": 22}
"""What every completion reports (per request)."""

_KEYWORDS = {"billing": ("invoice", "refund", "billing", "order"), "tech": ("error", "crash", "login", "api")}


@dataclass(frozen=True)
class Transcription:
    model: str
    filename: str
    content_type: str
    data: bytes


@dataclass
class FakeOpenAI:
    base_url: str = ""
    requests: list[dict[str, Any]] = field(default_factory=list)
    transcriptions: list[Transcription] = field(default_factory=list)
    word_delay_s: float = 0.0
    """A pause before each streamed word (tests that need a turn to last set it)."""
    transcription_usage: Literal["tokens", "duration", "none"] = "tokens"
    """The kind of usage transcriptions report (module docstring)."""

    def system_prompts(self) -> list[str]:
        return [
            str(message.get("content"))
            for body in self.requests
            for message in body.get("messages", [])
            if message.get("role") == "system"
        ]

    def tool_schemas(self) -> list[dict[str, Any]]:
        return [tool["function"] for body in self.requests for tool in body.get("tools", [])]


_FAKE = web.AppKey("fake", FakeOpenAI)


def transcription_text(data: bytes, content_type: str) -> str:
    """What the fake hears in a recording."""
    return f"heard {len(data)} bytes of {content_type}"


def transcription_usage_of(
    data: bytes, content_type: str, kind: Literal["tokens", "duration", "none"] = "tokens"
) -> dict[str, Any] | None:
    """The `usage` the fake reports for a recording (module docstring)."""
    if kind == "tokens":
        input_tokens = len(data) // 100 + 1
        output_tokens = len(transcription_text(data, content_type).split())
        return {
            "type": "tokens",
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "total_tokens": input_tokens + output_tokens,
        }
    if kind == "duration":
        return {"type": "duration", "seconds": len(data) / 1000}
    return None


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def _plan(body: dict[str, Any]) -> tuple[str, str, str]:
    """("call", name, arguments) or ("text", "", text)."""
    messages: list[dict[str, Any]] = body.get("messages", [])
    newest = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)
    user_text = _text(messages[newest].get("content")) if newest >= 0 else ""
    names = {
        call["id"]: call["function"]["name"]
        for message in messages[newest + 1 :]
        for call in message.get("tool_calls") or []
    }
    results = [
        _text(m.get("content"))
        for m in messages[newest + 1 :]
        if m.get("role") == "tool" and not names.get(m.get("tool_call_id"), "").startswith("transfer_to_")
    ]
    if results:
        return "text", "", "Tool said: " + " ".join(results)
    offered = [tool["function"]["name"] for tool in body.get("tools", [])]
    employee = re.search(r"\bE\d{4}\b", user_text, re.IGNORECASE)
    if employee and "lookup_employee" in offered:
        return "call", "lookup_employee", json.dumps({"query": {"employee_id": employee.group(0).upper()}})
    handoffs = [name for name in offered if name.startswith("transfer_to_")]
    if handoffs and len(handoffs) == len(offered):
        lowered = user_text.lower()
        domain = next((d for d, words in _KEYWORDS.items() if any(w in lowered for w in words)), "general")
        return "call", next((h for h in handoffs if domain in h), handoffs[0]), "{}"
    return "text", "", f"Echo: {user_text}"


def _chunk(
    body: dict[str, Any], completion_id: str, delta: dict[str, Any], finish: str | None = None
) -> bytes:
    payload = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": 0,
        "model": body.get("model", "fake"),
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return f"data: {json.dumps(payload)}\n\n".encode()


async def _chat_completions(request: web.Request) -> web.StreamResponse:
    fake = request.app[_FAKE]
    body = await request.json()
    fake.requests.append(body)
    kind, name, value = _plan(body)
    completion_id = f"chatcmpl-{secrets.token_hex(6)}"
    call_id = f"call_{secrets.token_hex(6)}"
    if not body.get("stream"):
        message: dict[str, Any] = {"role": "assistant", "content": value if kind == "text" else None}
        if kind == "call":
            message["tool_calls"] = [
                {"id": call_id, "type": "function", "function": {"name": name, "arguments": value}}
            ]
        return web.json_response(
            {
                "id": completion_id,
                "object": "chat.completion",
                "created": 0,
                "model": body.get("model", "fake"),
                "choices": [
                    {
                        "index": 0,
                        "message": message,
                        "finish_reason": "stop" if kind == "text" else "tool_calls",
                    }
                ],
                "usage": USAGE,
            }
        )
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    await response.write(_chunk(body, completion_id, {"role": "assistant", "content": ""}))
    if kind == "call":
        first = {"index": 0, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}
        await response.write(_chunk(body, completion_id, {"tool_calls": [first]}))
        third = max(1, len(value) // 3)
        for start in range(0, len(value), third):
            fragment = {"index": 0, "function": {"arguments": value[start : start + third]}}
            await response.write(_chunk(body, completion_id, {"tool_calls": [fragment]}))
        await response.write(_chunk(body, completion_id, {}, "tool_calls"))
    else:
        for index, word in enumerate(value.split(" ")):
            if fake.word_delay_s:
                await asyncio.sleep(fake.word_delay_s)
            await response.write(_chunk(body, completion_id, {"content": word if index == 0 else f" {word}"}))
        await response.write(_chunk(body, completion_id, {}, "stop"))
    if (body.get("stream_options") or {}).get("include_usage"):
        payload = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": 0,
            "model": body.get("model", "fake"),
            "choices": [],
            "usage": USAGE,
        }
        await response.write(f"data: {json.dumps(payload)}\n\n".encode())
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


async def _transcriptions(request: web.Request) -> web.Response:
    fields: dict[str, str] = {}
    audio: tuple[str, str, bytes] | None = None
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        assert isinstance(part, BodyPartReader)
        if part.name == "file":
            audio = (part.filename or "", part.headers.get("Content-Type", ""), await part.read())
        elif part.name:
            fields[part.name] = await part.text()
    if audio is None or "model" not in fields:
        return _openai_error(400, "file and model are required")
    filename, content_type, data = audio
    fake = request.app[_FAKE]
    fake.transcriptions.append(Transcription(fields["model"], filename, content_type, data))
    if data.startswith(b"REFUSE"):
        return _openai_error(400, "Audio file might be corrupted or unsupported")
    if data.startswith(b"FAIL"):
        return _openai_error(500, "The server had an error while processing your request")
    answer: dict[str, Any] = {"text": transcription_text(data, content_type)}
    usage = transcription_usage_of(data, content_type, fake.transcription_usage)
    if usage is not None:
        answer["usage"] = usage
    return web.json_response(answer)


def _openai_error(status: int, message: str) -> web.Response:
    error = {"message": message, "type": "invalid_request_error", "param": None, "code": None}
    return web.json_response({"error": error}, status=status)


@asynccontextmanager
async def fake_openai_server() -> AsyncIterator[FakeOpenAI]:
    """Serve the fake on 127.0.0.1:<free port>; yields its `base_url` (ending in `/v1`) and records."""
    fake = FakeOpenAI()
    app = web.Application()
    app[_FAKE] = fake
    app.router.add_post("/v1/chat/completions", _chat_completions)
    app.router.add_post("/v1/audio/transcriptions", _transcriptions)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    fake.base_url = f"http://127.0.0.1:{port}/v1"
    try:
        yield fake
    finally:
        await runner.cleanup()
