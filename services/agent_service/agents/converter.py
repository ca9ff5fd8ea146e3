"""ChatKit thread items → Agents SDK model input.

We reuse `chatkit.agents.ThreadItemConverter` (it already renders assistant messages, widgets,
workflows, tasks, client tool calls and hidden context the way ChatKit's own server does: context
items become user-role messages) and fill in the parts it leaves to the application:

- **attachments** become content (`attachment_input.py`): images as `input_image` parts with a
  `data:` URL, text files as their (bounded) text, other files as a description, each named by an
  `<attachment name=".." type=".." size="N bytes">` envelope. The bytes are read through the turn's
  `AttachmentReader`, which is why a converter belongs to ONE turn: build
  `SwitchboardConverter(turn.attachments)` per turn, never share one between requests (it holds the
  caller's reader, the turn's read budget and what it read). `to_agent_input` reads every
  attachment of the history first, concurrently, newest message first (the budget favours them);
  chatkit's per-attachment hook `attachment_to_message_content` then only looks the result up.
- **tags** (@-mentions) are rendered with their text, id and group.
- **hidden context with structured content** is serialised as JSON instead of raising.

**Client tool calls** keep chatkit's default: a pending call is left out (the model cannot see a
call without its output), a completed one becomes `function_call` + `function_call_output`
(`json.dumps(output)`) with the SDK's call id. The Agents SDK's Chat Completions converter turns
that pair into an assistant message with `tool_calls` and a `tool` message, so the continuation
works with every provider.

We extend **structured inputs**: chatkit renders each question as `question: answer`; we add the
question id, the offered options and the description, and write the answers as a JSON list, one
line per question, so the model knows what was asked and each answer survives commas and line
breaks. The opening sentence and the user role are chatkit's (the local demo model recognises
both):

    A structured input request was displayed to the user with the following status: answered
    <StructuredInput>
    - [priority] How urgent is it? (choose one of: Low, Normal, High) — answer: ["High"]
    - [details] Anything else we should know? (Ticket: app crashes) — answer: skipped
    </StructuredInput>

And we replace one default: **assistant messages** become plain-string content. The default emits
`output_text` parts inside an easy input message, which the Agents SDK's Chat Completions converter
rejects ("Unknown content") — so with every non-Responses provider the second turn of any
conversation would fail. A string is valid for both APIs (annotations were dropped by the default
conversion too).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Final, cast

from agents import TResponseInputItem
from chatkit.agents import ThreadItemConverter
from chatkit.types import (
    AssistantMessageItem,
    Attachment,
    GeneratedImageItem,
    HiddenContextItem,
    StructuredInput,
    StructuredInputFreeform,
    StructuredInputItem,
    ThreadItem,
    UserMessageItem,
    UserMessageTagContent,
)
from openai.types.responses import EasyInputMessageParam, ResponseInputContentParam, ResponseInputTextParam
from openai.types.responses.response_input_item_param import Message

from services.agent_service.agents.attachment_input import AttachmentInputs, AttachmentLimits
from services.agent_service.turn import AttachmentReader

STRUCTURED_INPUT_OPENING: Final = (
    "A structured input request was displayed to the user with the following status"
)
"""chatkit's opening sentence for a structured input (kept so every consumer recognises it)."""


def structured_input_line(question: StructuredInput) -> str:
    """One question of a structured input as a line of model input (see the module docstring)."""
    if isinstance(question, StructuredInputFreeform):
        note = f" ({question.description})" if question.description else ""
    else:
        choice = "any" if question.multiple else "one"
        note = f" (choose {choice} of: {', '.join(option.value for option in question.options)})"
    answer = question.answer
    if answer is None:
        rendered = "unanswered"
    elif answer.skipped:
        rendered = "skipped"
    else:
        rendered = json.dumps(answer.values, ensure_ascii=False)
    return f"- [{question.id}] {question.question}{note} — answer: {rendered}"


class SwitchboardConverter(ThreadItemConverter):
    """chatkit's converter with Switchboard's renderings (module docstring). One instance per turn."""

    def __init__(
        self, attachments: AttachmentReader | None = None, *, limits: AttachmentLimits | None = None
    ) -> None:
        self.attachments = AttachmentInputs(attachments, limits)

    async def to_agent_input(
        self, thread_items: Sequence[ThreadItem] | ThreadItem
    ) -> list[TResponseInputItem]:
        items = list(thread_items) if isinstance(thread_items, Sequence) else [thread_items]
        await self.attachments.prefetch(
            attachment
            for item in reversed(items)
            if isinstance(item, UserMessageItem)
            for attachment in item.attachments
        )
        return await super().to_agent_input(items)

    async def attachment_to_message_content(self, attachment: Attachment) -> ResponseInputContentParam:
        """chatkit's one part per attachment: the image itself, or the envelope with text or description.

        An image's envelope (its name, type and size) is added in front of it by
        `user_message_to_input`: `input_image` has no room for a name.
        """
        content = await self.attachments.content(attachment)
        return content.image_part() or content.envelope_part()

    async def user_message_to_input(
        self, item: UserMessageItem, is_last_message: bool = True
    ) -> TResponseInputItem | list[TResponseInputItem] | None:
        """chatkit's conversion, with every attachment as envelope (+ image), after the typed text.

        chatkit builds the user message as `[typed text, one part per attachment]`; we replace the
        attachment parts with `AttachmentContent.parts()`. Should chatkit change that layout, its
        message is kept as is (images then go without their envelope).
        """
        converted = await super().user_message_to_input(item, is_last_message)
        if not item.attachments or not isinstance(converted, list) or not converted:
            return converted
        message = cast(Message, converted[0])
        content = list(message["content"])
        if message.get("role") != "user" or len(content) != 1 + len(item.attachments):
            return converted
        parts = [content[0]]
        for attachment in item.attachments:
            parts.extend((await self.attachments.content(attachment)).parts())
        return [Message(type="message", role="user", content=parts), *converted[1:]]

    async def tag_to_message_content(self, tag: UserMessageTagContent) -> ResponseInputContentParam:
        group = f", group {tag.group}" if tag.group else ""
        return ResponseInputTextParam(type="input_text", text=f"@{tag.text} (tag id {tag.id}{group})")

    async def assistant_message_to_input(
        self, item: AssistantMessageItem
    ) -> TResponseInputItem | list[TResponseInputItem] | None:
        text = "".join(part.text for part in item.content)
        return EasyInputMessageParam(type="message", role="assistant", content=text)

    async def generated_image_to_input(
        self, item: GeneratedImageItem
    ) -> TResponseInputItem | list[TResponseInputItem] | None:
        """A generated image as a sentence: its stored URL is a placeholder (URLs are minted per
        reader), and the model that made it does not need to see it again."""
        if item.image is None:
            return None
        text = f"The following image was generated by the agent and shown to the user: image {item.image.id}."
        return Message(
            type="message", role="user", content=[ResponseInputTextParam(type="input_text", text=text)]
        )

    async def hidden_context_to_input(
        self, item: HiddenContextItem
    ) -> TResponseInputItem | list[TResponseInputItem] | None:
        if isinstance(item.content, str):
            return await super().hidden_context_to_input(item)
        rendered = item.model_copy(update={"content": json.dumps(item.content, default=str)})
        return await super().hidden_context_to_input(rendered)

    async def structured_input_to_input(
        self, item: StructuredInputItem
    ) -> TResponseInputItem | list[TResponseInputItem] | None:
        lines = "\n".join(structured_input_line(question) for question in item.inputs)
        text = f"{STRUCTURED_INPUT_OPENING}: {item.status}\n<StructuredInput>\n{lines}\n</StructuredInput>"
        return Message(
            type="message", role="user", content=[ResponseInputTextParam(type="input_text", text=text)]
        )
