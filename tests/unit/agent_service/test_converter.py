"""ChatKit history → model input: the parts `SwitchboardConverter` fills in or replaces."""

from __future__ import annotations

from datetime import UTC, datetime

from agents.models.chatcmpl_converter import Converter
from chatkit.types import (
    FileAttachment,
    HiddenContextItem,
    InferenceOptions,
    UserMessageItem,
    UserMessageTagContent,
    UserMessageTextContent,
)

from services.agent_service.agents.converter import SwitchboardConverter
from tests.unit.agent_service.agent_support import THREAD_ID, assistant, user


def _texts(item: object) -> list[str]:
    content = item["content"]  # type: ignore[index]
    return [content] if isinstance(content, str) else [part["text"] for part in content]


async def test_attachments_and_tags_are_described_as_text() -> None:
    message = UserMessageItem(
        id="msg_1",
        thread_id=THREAD_ID,
        created_at=datetime.now(UTC),
        content=[
            UserMessageTextContent(text="Please check "),
            UserMessageTagContent(id="E1001", text="Ada", data={}, group="Employees"),
        ],
        attachments=[FileAttachment(id="atc_1", name="invoice.pdf", mime_type="application/pdf")],
        inference_options=InferenceOptions(),
    )
    text_item, tags_item = await SwitchboardConverter().to_agent_input([message])
    assert _texts(text_item) == ["Please check @Ada", "[Attachment (file): invoice.pdf, application/pdf]"]
    assert _texts(tags_item)[-1] == "@Ada (tag id E1001, group Employees)"


async def test_structured_hidden_context_is_json() -> None:
    hidden = HiddenContextItem(
        id="hc_1", thread_id=THREAD_ID, created_at=datetime.now(UTC), content={"plan": "gold", "seats": 3}
    )
    [item] = await SwitchboardConverter().to_agent_input([hidden])
    assert item["role"] == "user"  # type: ignore[typeddict-item]
    assert '{"plan": "gold", "seats": 3}' in _texts(item)[0]


async def test_assistant_messages_convert_for_chat_completions_providers() -> None:
    """Regression: chatkit's default output_text parts are rejected by the Chat Completions converter."""
    items = await SwitchboardConverter().to_agent_input([user("hi"), assistant("Hello Ada"), user("name?")])
    messages = Converter.items_to_messages(items)
    assert [(m["role"], m["content"]) for m in messages][1] == ("assistant", "Hello Ada")
