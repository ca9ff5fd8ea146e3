"""ChatKit history → model input: the parts `SwitchboardConverter` fills in or replaces."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from agents.models.chatcmpl_converter import Converter
from chatkit.types import (
    ClientToolCallItem,
    FileAttachment,
    HiddenContextItem,
    InferenceOptions,
    StructuredInputAnswer,
    StructuredInputFreeform,
    StructuredInputItem,
    StructuredInputMultipleChoice,
    StructuredInputMultipleChoiceOption,
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
    assert _texts(text_item) == [
        "Please check @Ada",
        '<attachment name="invoice.pdf" type="application/pdf">'
        "(binary file, content not included)</attachment>",
    ]
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


def _form(status: str, priority: StructuredInputAnswer | None, details: StructuredInputAnswer | None) -> Any:
    return StructuredInputItem(
        id="msg_form",
        thread_id=THREAD_ID,
        created_at=datetime.now(UTC),
        status=status,  # type: ignore[arg-type]
        inputs=[
            StructuredInputMultipleChoice(
                id="priority",
                question="How urgent is it?",
                options=[StructuredInputMultipleChoiceOption(value=v) for v in ("Low", "High")],
                answer=priority,
            ),
            StructuredInputMultipleChoice(
                id="areas",
                question="Where?",
                options=[StructuredInputMultipleChoiceOption(value="UI")],
                multiple=True,
            ),
            StructuredInputFreeform(
                id="details", question="Anything else?", description="Ticket: crash", answer=details
            ),
        ],
    )


async def test_structured_input_shows_ids_options_and_exact_answers() -> None:
    answered = _form(
        "answered",
        StructuredInputAnswer(values=["High"]),
        StructuredInputAnswer(values=['Crashes, "always",\nsince v2']),
    )
    [item] = await SwitchboardConverter().to_agent_input([answered])
    assert item["role"] == "user"  # type: ignore[typeddict-item]
    [text] = _texts(item)
    lines = text.splitlines()
    assert (
        lines[0] == "A structured input request was displayed to the user with the following status: answered"
    )
    assert lines[1:] == [
        "<StructuredInput>",
        '- [priority] How urgent is it? (choose one of: Low, High) — answer: ["High"]',
        "- [areas] Where? (choose any of: UI) — answer: unanswered",
        '- [details] Anything else? (Ticket: crash) — answer: ["Crashes, \\"always\\",\\nsince v2"]',
        "</StructuredInput>",
    ]
    [message] = Converter.items_to_messages([item])
    assert message["role"] == "user"


async def test_a_skipped_structured_input_says_so() -> None:
    skipped = _form("skipped", StructuredInputAnswer(skipped=True), StructuredInputAnswer(skipped=True))
    [item] = await SwitchboardConverter().to_agent_input([skipped])
    [text] = _texts(item)
    assert "status: skipped" in text
    assert "How urgent is it? (choose one of: Low, High) — answer: skipped" in text


async def test_client_tool_calls_replay_as_a_tool_exchange_once_completed() -> None:
    call = ClientToolCallItem(
        id="tc_1",
        thread_id=THREAD_ID,
        created_at=datetime.now(UTC),
        call_id="call_7",
        name="get_user_local_time",
        arguments={"include_date": False},
    )
    pending = await SwitchboardConverter().to_agent_input([user("time?"), call])
    assert [i.get("type") for i in pending] == ["message"], "a pending call has no output to send"

    completed = call.model_copy(update={"status": "completed", "output": {"time": "14:05"}})
    items = await SwitchboardConverter().to_agent_input([user("time?"), completed])
    assert [i.get("type") for i in items] == ["message", "function_call", "function_call_output"]
    messages = Converter.items_to_messages(items)
    assert [m["role"] for m in messages] == ["user", "assistant", "tool"]
    assert messages[1]["tool_calls"][0]["id"] == "call_7"  # type: ignore[typeddict-item]
    assert messages[2]["tool_call_id"] == "call_7"  # type: ignore[typeddict-item]
    assert messages[2]["content"] == '{"time": "14:05"}'
