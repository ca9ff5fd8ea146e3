"""ChatKit thread items → Agents SDK model input.

We reuse `chatkit.agents.ThreadItemConverter` (it already renders assistant messages, widgets,
workflows, tasks, client tool calls and hidden context the way ChatKit's own server does: context
items become user-role messages) and fill in the parts it leaves to the application:

- **attachments** are described by name and MIME type as text. The model does not see the bytes
  yet; passing images or files needs the upload service's download URLs (a later step).
- **tags** (@-mentions) are rendered with their text, id and group.
- **hidden context with structured content** is serialised as JSON instead of raising.

And we replace one default: **assistant messages** become plain-string content. The default emits
`output_text` parts inside an easy input message, which the Agents SDK's Chat Completions converter
rejects ("Unknown content") — so with every non-Responses provider the second turn of any
conversation would fail. A string is valid for both APIs (annotations were dropped by the default
conversion too).
"""

from __future__ import annotations

import json

from agents import TResponseInputItem
from chatkit.agents import ThreadItemConverter
from chatkit.types import AssistantMessageItem, Attachment, HiddenContextItem, UserMessageTagContent
from openai.types.responses import EasyInputMessageParam, ResponseInputContentParam, ResponseInputTextParam


class SwitchboardConverter(ThreadItemConverter):
    async def attachment_to_message_content(self, attachment: Attachment) -> ResponseInputContentParam:
        return ResponseInputTextParam(
            type="input_text",
            text=f"[Attachment ({attachment.type}): {attachment.name}, {attachment.mime_type}]",
        )

    async def tag_to_message_content(self, tag: UserMessageTagContent) -> ResponseInputContentParam:
        group = f", group {tag.group}" if tag.group else ""
        return ResponseInputTextParam(type="input_text", text=f"@{tag.text} (tag id {tag.id}{group})")

    async def assistant_message_to_input(
        self, item: AssistantMessageItem
    ) -> TResponseInputItem | list[TResponseInputItem] | None:
        text = "".join(part.text for part in item.content)
        return EasyInputMessageParam(type="message", role="assistant", content=text)

    async def hidden_context_to_input(
        self, item: HiddenContextItem
    ) -> TResponseInputItem | list[TResponseInputItem] | None:
        if isinstance(item.content, str):
            return await super().hidden_context_to_input(item)
        rendered = item.model_copy(update={"content": json.dumps(item.content, default=str)})
        return await super().hidden_context_to_input(rendered)
