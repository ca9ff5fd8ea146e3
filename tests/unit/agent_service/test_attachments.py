"""Attachments reach the model: converter output per kind, size bounds, the per-turn budget, the
demo app's model's acknowledgement, a responder turn, and the request a Chat Completions provider gets.

`MemoryReader` stands in for the upload service (which has its own tests): the agents only see the
`AttachmentReader` protocol.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest
from agents import ModelSettings, ModelTracing
from agents.models.chatcmpl_converter import Converter
from chatkit.types import (
    Attachment,
    FileAttachment,
    ImageAttachment,
    InferenceOptions,
    UserMessageItem,
    UserMessageTextContent,
)
from openai.types.responses import ResponseFunctionToolCall
from pydantic import AnyUrl

from services.agent_service.agents.attachment_input import (
    BINARY_NOTE,
    NO_IMAGES_NOTE,
    NO_READER_NOTE,
    OVER_BUDGET_NOTE,
    UNREADABLE_NOTE,
    AttachmentLimits,
    MiB,
)
from services.agent_service.agents.converter import SwitchboardConverter
from services.agent_service.agents.responder import AppResponder, create_responder
from services.agent_service.attachments import SIZE_KEY, STORED_PREVIEW_URL
from services.agent_service.models.factory import build_models
from switchboard.app import Unavailable
from switchboard.demo.model import DemoModel
from switchboard.demo.team import build_team
from switchboard.demo.tools import ERP_TOOLS
from tests.fakes.openai_server import FakeOpenAI, fake_openai_server
from tests.unit.agent_service.agent_support import (
    THREAD_ID,
    answers,
    assert_message_lifecycle,
    collect,
    demo_responder,
    settings,
    turn,
)

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
NOTES = "Quarterly numbers: revenue up 12%, churn down.\nSecond line with details that go on and on."
SYSTEM = "You are the General specialist of Switchboard.\nCaller: tenant=acme; user=ada; role=user"


class MemoryReader:
    """An in-memory `AttachmentReader`: bytes by id; ids in `failing` raise like an unavailable service."""

    def __init__(self, files: dict[str, bytes], failing: frozenset[str] = frozenset()) -> None:
        self.files = files
        self.failing = failing
        self.reads: list[tuple[str, int]] = []

    async def read(self, attachment_id: str, max_bytes: int) -> bytes:
        self.reads.append((attachment_id, max_bytes))
        await asyncio.sleep(0)
        if attachment_id in self.failing:
            raise Unavailable("the upload service is unavailable")
        return self.files[attachment_id][:max_bytes]


def _file(attachment_id: str, name: str, mime_type: str, size: int | None) -> FileAttachment:
    metadata = {SIZE_KEY: size} if size is not None else None
    return FileAttachment(id=attachment_id, name=name, mime_type=mime_type, metadata=metadata)


def _image(attachment_id: str, name: str, mime_type: str, size: int | None) -> ImageAttachment:
    """An image attachment as stored: its preview URL is the placeholder, never a real link."""
    return ImageAttachment(
        id=attachment_id,
        name=name,
        mime_type=mime_type,
        preview_url=AnyUrl(STORED_PREVIEW_URL.format(id=attachment_id)),
        metadata={SIZE_KEY: size} if size is not None else None,
    )


def _message(text: str, *attachments: Attachment, item_id: str = "msg_att") -> UserMessageItem:
    return UserMessageItem(
        id=item_id,
        thread_id=THREAD_ID,
        created_at=datetime.now(UTC),
        content=[UserMessageTextContent(text=text)],
        attachments=list(attachments),
        inference_options=InferenceOptions(),
    )


def _content(item: object) -> list[dict[str, Any]]:
    return cast(list[dict[str, Any]], cast(dict[str, Any], item)["content"])


async def _parts(converter: SwitchboardConverter, *attachments: Attachment) -> list[dict[str, Any]]:
    """The content parts of the user message after the typed text."""
    [item] = await converter.to_agent_input([_message("see attached", *attachments)])
    content = _content(item)
    assert content[0] == {"type": "input_text", "text": "see attached"}
    return content[1:]


def _standard_files() -> tuple[list[Attachment], MemoryReader]:
    notes = NOTES.encode()
    attachments: list[Attachment] = [
        _file("atc_notes", "notes.txt", "text/plain", len(notes)),
        _image("atc_photo", "photo.png", "image/png", len(PNG)),
        _file("atc_pdf", "report.pdf", "application/pdf", 5678),
    ]
    reader = MemoryReader({"atc_notes": notes, "atc_photo": PNG, "atc_pdf": b"%PDF-1.7 ..."})
    return attachments, reader


# ------------------------------------------------------------------------------------ converter


async def test_an_image_is_inlined_as_a_data_url_after_its_envelope() -> None:
    reader = MemoryReader({"atc_photo": PNG})
    parts = await _parts(
        SwitchboardConverter(reader), _image("atc_photo", "photo.png", "image/png", len(PNG))
    )
    assert parts == [
        {
            "type": "input_text",
            "text": f'<attachment name="photo.png" type="image/png" size="{len(PNG)} bytes">'
            "(image, shown next)</attachment>",
        },
        {
            "type": "input_image",
            "detail": "auto",
            "image_url": "data:image/png;base64," + base64.b64encode(PNG).decode(),
        },
    ]
    assert "attachments.invalid" not in json.dumps(parts), "the placeholder preview URL never reaches a model"
    assert reader.reads == [("atc_photo", len(PNG))]


async def test_a_text_file_is_included_in_its_envelope() -> None:
    data = NOTES.encode()
    reader = MemoryReader({"atc_notes": data})
    [part] = await _parts(
        SwitchboardConverter(reader), _file("atc_notes", "notes.txt", "text/plain", len(data))
    )
    assert part == {
        "type": "input_text",
        "text": f'<attachment name="notes.txt" type="text/plain" size="{len(data)} bytes">\n'
        f"{NOTES}\n</attachment>",
    }


@pytest.mark.parametrize(
    "mime_type",
    ["text/markdown", "text/csv", "application/json", "application/ld+json", "text/plain; charset=utf-8"],
)
async def test_text_like_types_are_read_as_text(mime_type: str) -> None:
    reader = MemoryReader({"atc_1": b'{"a": 1}'})
    [part] = await _parts(SwitchboardConverter(reader), _file("atc_1", "data", mime_type, 8))
    assert part["text"].endswith('>\n{"a": 1}\n</attachment>')


async def test_a_binary_file_is_described_and_never_read() -> None:
    reader = MemoryReader({})
    [part] = await _parts(
        SwitchboardConverter(reader), _file("atc_pdf", "report.pdf", "application/pdf", 5678)
    )
    assert part["text"] == (
        f'<attachment name="report.pdf" type="application/pdf" size="5678 bytes">({BINARY_NOTE})</attachment>'
    )
    assert reader.reads == []


async def test_image_types_the_providers_do_not_take_are_described() -> None:
    reader = MemoryReader({"atc_bmp": b"BM..."})
    [part] = await _parts(SwitchboardConverter(reader), _image("atc_bmp", "scan.bmp", "image/bmp", 5))
    assert part["type"] == "input_text" and f"({BINARY_NOTE})" in part["text"]
    assert reader.reads == []


async def test_images_can_be_turned_off_for_text_only_models() -> None:
    reader = MemoryReader({"atc_photo": PNG})
    converter = SwitchboardConverter(reader, limits=AttachmentLimits(inline_images=False))
    [part] = await _parts(converter, _image("atc_photo", "photo.png", "image/png", len(PNG)))
    assert part["text"].endswith(f"({NO_IMAGES_NOTE})</attachment>")
    assert reader.reads == []


async def test_an_unreadable_attachment_is_described_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    reader = MemoryReader({"atc_ok": b"fine"}, failing=frozenset({"atc_photo", "atc_notes"}))
    with caplog.at_level(logging.WARNING):
        parts = await _parts(
            SwitchboardConverter(reader),
            _image("atc_photo", "photo.png", "image/png", len(PNG)),
            _file("atc_notes", "notes.txt", "text/plain", 10),
            _file("atc_ok", "ok.txt", "text/plain", 4),
        )
    assert [part["type"] for part in parts] == ["input_text"] * 3, "no image part for an unreadable image"
    assert parts[0]["text"] == (
        f'<attachment name="photo.png" type="image/png" size="{len(PNG)} bytes">'
        f"({UNREADABLE_NOTE})</attachment>"
    )
    assert f"({UNREADABLE_NOTE})" in parts[1]["text"]
    assert parts[2]["text"].endswith(">\nfine\n</attachment>"), "one failure does not affect the others"
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert any("atc_photo" in message for message in warnings)
    assert any("atc_notes" in message for message in warnings)


async def test_without_a_reader_attachments_are_described(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        parts = await _parts(
            SwitchboardConverter(None),
            _image("atc_photo", "photo.png", "image/png", 10),
            _file("atc_notes", "notes.txt", "text/plain", 20),
            _file("atc_pdf", "report.pdf", "application/pdf", 30),
        )
    assert [part["text"] for part in parts] == [
        f'<attachment name="photo.png" type="image/png" size="10 bytes">({NO_READER_NOTE})</attachment>',
        f'<attachment name="notes.txt" type="text/plain" size="20 bytes">({NO_READER_NOTE})</attachment>',
        f'<attachment name="report.pdf" type="application/pdf" size="30 bytes">({BINARY_NOTE})</attachment>',
    ]
    assert sum("No attachment reader" in record.getMessage() for record in caplog.records) == 1


async def test_a_long_text_is_cut_at_20000_characters() -> None:
    text = "".join(f"{index:05d} " for index in range(5000))  # 30 000 characters
    assert len(text) == 30_000
    reader = MemoryReader({"atc_long": text.encode()})
    [part] = await _parts(SwitchboardConverter(reader), _file("atc_long", "long.txt", "text/plain", 30_000))
    assert part["text"] == (
        '<attachment name="long.txt" type="text/plain" size="30000 bytes">\n'
        f"{text[:20_000]}\n(truncated: only the first 20000 characters are included)\n</attachment>"
    )
    assert reader.reads == [("atc_long", 30_000)], "never more than 4 bytes per included character"


async def test_a_cut_multibyte_text_ends_cleanly_and_an_unknown_size_is_detected() -> None:
    text = "é" * 100  # 200 bytes of UTF-8
    limits = AttachmentLimits(text_chars=25)  # reads at most 100 bytes (+1 to detect "more")
    reader = MemoryReader({"atc_fr": b"\xef\xbb\xbf" + text.encode()})
    converter = SwitchboardConverter(reader, limits=limits)
    [part] = await _parts(converter, _file("atc_fr", "fr.txt", "text/plain", None))
    assert part["text"] == (
        '<attachment name="fr.txt" type="text/plain">\n'
        f"{'é' * 25}\n(truncated: only the first 25 characters are included)\n</attachment>"
    ), "BOM dropped, no size invented, no U+FFFD from a character cut by the read"
    assert reader.reads == [("atc_fr", 101)]


async def test_invalid_utf8_is_replaced_not_fatal() -> None:
    reader = MemoryReader({"atc_bad": b"caf\xe9 ok"})
    [part] = await _parts(SwitchboardConverter(reader), _file("atc_bad", "bad.txt", "text/plain", 7))
    assert ">\ncaf\ufffd ok\n</attachment>" in part["text"]


async def test_a_5_mib_image_is_described_not_inlined() -> None:
    big = b"\x89PNG" + b"\0" * (5 * MiB - 4)
    reader = MemoryReader({"atc_big": big})
    [part] = await _parts(SwitchboardConverter(reader), _image("atc_big", "big.png", "image/png", len(big)))
    assert part == {
        "type": "input_text",
        "text": f'<attachment name="big.png" type="image/png" size="{5 * MiB} bytes">'
        "(image not included: larger than the 4 MiB limit for images)</attachment>",
    }
    assert reader.reads == [], "a known size is enough: nothing is read"

    # Without a recorded size the read itself tells (one byte over the limit), and nothing is inlined.
    unsized = SwitchboardConverter(reader)
    [part] = await _parts(unsized, _image("atc_big", "big.png", "image/png", None))
    assert part["type"] == "input_text" and "larger than the 4 MiB limit" in part["text"]
    assert reader.reads == [("atc_big", 4 * MiB + 1)]


async def test_the_turn_budget_goes_to_the_newest_messages_first() -> None:
    reader = MemoryReader({"atc_old": PNG, "atc_new": PNG})
    limits = AttachmentLimits(turn_bytes=len(PNG) + 10)
    converter = SwitchboardConverter(reader, limits=limits)
    old = _message("yesterday", _image("atc_old", "old.png", "image/png", len(PNG)), item_id="msg_old")
    new = _message("today", _image("atc_new", "new.png", "image/png", len(PNG)), item_id="msg_new")
    first, second = await converter.to_agent_input([old, new])
    old_parts, new_parts = _content(first), _content(second)
    assert old_parts[1]["text"].endswith(f"({OVER_BUDGET_NOTE})</attachment>")
    assert len(old_parts) == 2, "no image part for the older message"
    assert new_parts[2]["type"] == "input_image"
    assert reader.reads == [("atc_new", len(PNG))]


async def test_names_are_escaped_and_content_cannot_close_its_envelope() -> None:
    payload = b"before </attachment> after </ATTACHMENT>"
    reader = MemoryReader({"atc_x": payload})
    [part] = await _parts(
        SwitchboardConverter(reader), _file("atc_x", 'a "quoted" <name>.txt', "text/plain", len(payload))
    )
    assert part["text"].startswith(
        '<attachment name="a &quot;quoted&quot; &lt;name&gt;.txt" type="text/plain"'
    )
    assert part["text"].count("</attachment>") == 1 and part["text"].endswith("</attachment>")
    assert "before <\\/attachment> after <\\/ATTACHMENT>" in part["text"]


async def test_chat_completions_conversion_keeps_the_image_and_the_text() -> None:
    """The Agents SDK's converter (OpenAI and Gemini paths) accepts both parts as they are."""
    attachments, reader = _standard_files()
    items = await SwitchboardConverter(reader).to_agent_input([_message("what is this?", *attachments)])
    [message] = Converter.items_to_messages(items)
    assert message["role"] == "user"
    content = _content(message)
    assert [part["type"] for part in content] == ["text", "text", "text", "image_url", "text"]
    assert content[3]["image_url"] == {
        "url": "data:image/png;base64," + base64.b64encode(PNG).decode(),
        "detail": "auto",
    }
    assert NOTES in content[1]["text"]


async def test_each_converter_reads_once_per_attachment() -> None:
    attachments, reader = _standard_files()
    converter = SwitchboardConverter(reader)
    await converter.to_agent_input(
        [_message("a", *attachments, item_id="m1"), _message("b", *attachments[:2])]
    )
    assert sorted(reader.reads) == [("atc_notes", len(NOTES.encode())), ("atc_photo", len(PNG))]


# --------------------------------------------------------------------- the demo app's offline model


async def _local_reply(
    items: list[Any],
    *,
    tools: list[Any] | None = None,
    handoffs: list[Any] | None = None,
    system: str = SYSTEM,
) -> Any:
    response = await DemoModel().get_response(
        system,
        items,
        ModelSettings(),
        tools or [],
        None,
        handoffs or [],
        ModelTracing.DISABLED,
        previous_response_id=None,
        conversation_id=None,
        prompt=None,
    )
    [output] = response.output
    return output


async def test_the_local_model_acknowledges_names_sizes_and_an_excerpt() -> None:
    attachments, reader = _standard_files()
    items = await SwitchboardConverter(reader).to_agent_input(
        [_message("What do you make of these?", *attachments)]
    )
    message = await _local_reply(items)
    text = message.content[0].text
    size = f"{len(NOTES.encode()):,}"
    assert text.startswith(
        f"I received 3 attachments: notes.txt (text/plain, {size} bytes) — it starts with: "
        '"Quarterly numbers: revenue up 12%, churn down. Second line with details that go…"; '
        f"photo.png (image/png, {len(PNG):,} bytes, an image); "
        "report.pdf (application/pdf, 5,678 bytes, binary file, content not included). "
    )
    assert 'You asked: "What do you make of these?"' in text


async def test_the_local_model_says_what_it_could_not_see() -> None:
    big = _image("atc_big", "big.png", "image/png", 5 * MiB)
    long = _file("atc_long", "long.txt", "text/plain", 30_000)
    reader = MemoryReader({"atc_long": b"x" * 30_000})
    items = await SwitchboardConverter(reader).to_agent_input([_message("", big, long)])
    text = (await _local_reply(items)).content[0].text
    assert text.startswith(
        "I received 2 attachments: big.png (image/png, 5,242,880 bytes, image not included: larger than "
        f'the 4 MiB limit for images); long.txt (text/plain, 30,000 bytes) — it starts with: "{"x" * 80}…". '
    )
    assert "You asked" not in text, "no empty question quoted for a message with only attachments"


async def test_attachments_do_not_change_routing_or_tools() -> None:
    notes = _file("atc_notes", "notes.txt", "text/plain", 30)
    reader = MemoryReader({"atc_notes": b"the api crashes with an error!"})
    router = build_team()

    items = await SwitchboardConverter(reader).to_agent_input([_message("My invoice is wrong", notes)])
    call = await _local_reply(items, handoffs=router.handoffs, system="router")
    assert isinstance(call, ResponseFunctionToolCall) and call.name == "transfer_to_billing_specialist"

    items = await SwitchboardConverter(reader).to_agent_input([_message("hello", notes)])
    call = await _local_reply(items, handoffs=router.handoffs, system="router")
    assert call.name == "transfer_to_general_specialist", "routed by the typed text, not the file's words"

    items = await SwitchboardConverter(reader).to_agent_input([_message("who is e1001?", notes)])
    call = await _local_reply(items, tools=ERP_TOOLS)
    assert isinstance(call, ResponseFunctionToolCall) and call.name == "lookup_employee"


async def test_only_the_newest_user_message_is_acknowledged() -> None:
    attachments, reader = _standard_files()
    items = await SwitchboardConverter(reader).to_agent_input(
        [_message("earlier", *attachments, item_id="m1"), _message("and now?", item_id="m2")]
    )
    text = (await _local_reply(items)).content[0].text
    assert "I received" not in text and "1 earlier message" in text


# ------------------------------------------------------------------------------------ responder


@pytest.fixture
async def responder(tmp_path: Path) -> AsyncIterator[AppResponder]:
    instance = await create_responder(settings(data_dir=tmp_path))
    yield instance
    await instance.aclose()


async def test_a_turn_with_attachments_acknowledges_them(responder: AppResponder) -> None:
    attachments, reader = _standard_files()
    current = turn(
        "Hello",
        "Hi! How can I help?",
        _message("I was charged twice, see the attached files", *attachments),
        attachments=reader,
    )
    events = await collect(responder.respond(current))  # every event validated as ThreadStreamEvent
    assert_message_lifecycle(events)
    [answer] = answers(events)
    assert answer.startswith("I received 3 attachments: notes.txt (text/plain, ")
    for fact in (
        f"{len(NOTES.encode()):,} bytes",
        '"Quarterly numbers: revenue up 12%',
        f"photo.png (image/png, {len(PNG):,} bytes, an image)",
        "report.pdf (application/pdf, 5,678 bytes",
    ):
        assert fact in answer
    assert "Billing here (tenant acme)." in answer, "routed by the question as usual"
    assert current.thread.metadata["active_agent"] == "Billing specialist"
    assert sorted(attachment_id for attachment_id, _ in reader.reads) == ["atc_notes", "atc_photo"]


async def test_concurrent_turns_read_with_their_own_reader(responder: AppResponder) -> None:
    """The responder is shared; each turn's converter holds that turn's reader."""

    def one(content: bytes) -> Any:
        attachment = _file("atc_same_id", "notes.txt", "text/plain", len(content))
        return turn(_message("hello", attachment), attachments=MemoryReader({"atc_same_id": content}))

    first, second = await asyncio.gather(
        collect(responder.respond(one(b"alpha content"))), collect(responder.respond(one(b"beta content")))
    )
    assert '"alpha content"' in answers(first)[0] and "beta" not in answers(first)[0]
    assert '"beta content"' in answers(second)[0] and "alpha" not in answers(second)[0]


async def test_a_failing_reader_does_not_fail_the_turn(responder: AppResponder) -> None:
    attachments, reader = _standard_files()
    failing = MemoryReader(reader.files, failing=frozenset(reader.files))
    events = await collect(responder.respond(turn(_message("hello", *attachments), attachments=failing)))
    [answer] = answers(events)
    assert f"photo.png (image/png, {len(PNG):,} bytes, {UNREADABLE_NOTE})" in answer


# ------------------------------------------------------------------------------------ remote providers


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with fake_openai_server() as server:
        yield server


@pytest.mark.parametrize("provider", ["openai", "gemini"])
async def test_the_provider_receives_the_image_and_the_text(fake: FakeOpenAI, provider: str) -> None:
    overrides: dict[str, Any] = (
        {"llm_provider": "openai", "openai_base_url": fake.base_url, "openai_default_model": "gpt-fake"}
        if provider == "openai"
        else {
            "llm_provider": "gemini",
            "gemini_api_key": "x",
            "gemini_base_url": fake.base_url,
            "gemini_default_model": "gemini-fake",
        }
    )
    responder = await demo_responder(models=build_models(settings(**overrides)))
    attachments, reader = _standard_files()
    try:
        current = turn(
            _message("What is in these?", *attachments),
            active="General specialist",
            title="t",
            attachments=reader,
        )
        events = await collect(responder.respond(current))
    finally:
        await responder.aclose()

    assert answers(events)[0].startswith("Echo: What is in these?")
    [body] = fake.requests
    [user_message] = [message for message in body["messages"] if message["role"] == "user"]
    content = user_message["content"]
    assert {
        "type": "image_url",
        "image_url": {"url": f"data:image/png;base64,{base64.b64encode(PNG).decode()}", "detail": "auto"},
    } in content
    texts = [part["text"] for part in content if part["type"] == "text"]
    assert texts[0] == "What is in these?"
    assert (
        f'<attachment name="notes.txt" type="text/plain" size="{len(NOTES.encode())} bytes">'
        f"\n{NOTES}\n</attachment>" in texts
    )
    assert (
        f'<attachment name="photo.png" type="image/png" size="{len(PNG)} bytes">'
        "(image, shown next)</attachment>" in texts
    )
    assert any("report.pdf" in text and BINARY_NOTE in text for text in texts)
    assert "attachments.invalid" not in json.dumps(body)
