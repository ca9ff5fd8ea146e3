"""Attachments as model input: what the model sees of each file a user attached.

The model receives an attachment's *content*, read on the caller's behalf through the turn's
`AttachmentReader` (the upload service checks ownership; see `services/agent_service/attachments.py`),
never its preview URL: stored image attachments carry the placeholder `https://attachments.invalid/<id>`,
and a presigned URL would be both short-lived and a credential handed to a third party.

Every attachment gets an **envelope**, one `input_text` part that names it:

    <attachment name="notes.txt" type="text/plain" size="1234 bytes">
    …the decoded text…
    </attachment>

- **images** the providers accept (`image/png`, `image/jpeg`, `image/gif`, `image/webp`), up to
  `AttachmentLimits.image_bytes` (4 MiB): the envelope says `(image, shown next)` and is followed by
  an `input_image` part whose `image_url` is a `data:<type>;base64,…` URL. The Agents SDK turns it
  into a Chat Completions `image_url` part, which OpenAI and Gemini's compatibility layer accept;
- **text-like files** (`text/*`, JSON, XML, YAML, NDJSON, CSV, Markdown, …): the envelope holds the
  content decoded as UTF-8 (`errors="replace"`, a leading BOM dropped), at most
  `AttachmentLimits.text_chars` (20 000) characters; a cut file ends with the line
  `(truncated: only the first 20000 characters are included)`;
- **everything else** (PDF, office documents, archives, other images, …), and every file whose
  content cannot be included, is described only, the reason in parentheses:

      <attachment name="report.pdf" type="application/pdf" size="5678 bytes">(binary file, content
      not included)</attachment>

  (one line in the model input).

Attribute values are HTML-escaped (`&quot;`, `&lt;`, …); `size` is the size the upload service
recorded (`metadata["size"]`), else the length read, and is left out when neither is known. Text
content is untrusted: a `</attachment` inside it is written `<\\/attachment`, so a file cannot end its
envelope early and pose as conversation text (it remains user-provided data, not instructions).

Failure is never fatal: without a reader (no upload service configured) or when a read fails, the
attachment is described and a warning is logged; the turn goes on.

Images are sent to whatever model is configured. A text-only model behind an OpenAI-compatible
server rejects `image_url` parts (the turn then fails with the provider's error): for such a
deployment build the converter with `AttachmentLimits(inline_images=False)`, which describes images
instead. (There is no setting for it yet.)

**Budget.** Each turn converts the whole (bounded) history, so the attachments of earlier messages are
read and sent again: the model can still compare today's screenshot with yesterday's. To bound what
one request carries (Gemini refuses inline data beyond ~20 MB per request, and every byte costs
tokens and latency), a turn reads at most `AttachmentLimits.turn_bytes` (12 MiB, about 16 MiB as
base64) in total. The budget goes to the newest messages first (`prefetch` is called newest first);
attachments beyond it are described with a note. Reads run concurrently (at most
`concurrent_reads` at a time). Nothing is cached across turns: bytes are not kept in the agent
service, and each turn reads with the current caller's credentials.
"""

from __future__ import annotations

import asyncio
import base64
import codecs
import html
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal

from chatkit.types import Attachment
from openai.types.responses import (
    ResponseInputContentParam,
    ResponseInputImageParam,
    ResponseInputTextParam,
)

from services.agent_service.attachments import SIZE_KEY
from services.agent_service.turn import AttachmentReader

logger = logging.getLogger(__name__)

MiB: Final = 1024 * 1024
MODEL_IMAGE_TYPES: Final = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})
"""Image types inlined as `input_image`: the ones OpenAI and Gemini both accept."""
_TEXT_TYPES: Final = frozenset(
    {
        "application/json",
        "application/xml",
        "application/yaml",
        "application/x-yaml",
        "application/x-ndjson",
        "application/javascript",
        "application/sql",
        "application/csv",
        "application/x-csv",
        "application/markdown",
        "application/x-markdown",
    }
)
_TEXT_SUFFIXES: Final = ("+json", "+xml", "+yaml")
_ALIASES: Final = {"image/jpg": "image/jpeg", "image/pjpeg": "image/jpeg", "image/x-png": "image/png"}
_CLOSING_TAG: Final = re.compile(r"</(attachment)", re.IGNORECASE)

IMAGE_SHOWN_NEXT: Final = "(image, shown next)"
"""Body of an image's envelope when its `input_image` part follows."""
BINARY_NOTE: Final = "binary file, content not included"
NO_READER_NOTE: Final = "content not available: attachments cannot be read on this server"
UNREADABLE_NOTE: Final = "content not available: the file could not be read"
OVER_BUDGET_NOTE: Final = (
    "content not included: this request already carries as much attachment content as it may "
    "(newer attachments come first)"
)
EMPTY_NOTE: Final = "empty file"
NO_IMAGES_NOTE: Final = "image not included: this assistant's model does not take images"


@dataclass(frozen=True, slots=True)
class AttachmentLimits:
    """How much attachment content one turn may put into the model input (module docstring)."""

    image_bytes: int = 4 * MiB
    """Largest image inlined; a larger one is described."""
    text_chars: int = 20_000
    """Characters of a text file included; the rest is cut and marked `(truncated…)`."""
    turn_bytes: int = 12 * MiB
    """Bytes read per turn over all attachments of the history, newest messages first."""
    concurrent_reads: int = 4
    inline_images: bool = True
    """False for a model that takes no images: they are described (and not read)."""

    @property
    def text_bytes(self) -> int:
        """Bytes read from a text file: enough for `text_chars` characters of any UTF-8 text."""
        return 4 * self.text_chars


def mime_essence(mime_type: str) -> str:
    """`type/subtype` in lower case, parameters dropped, common aliases (`image/jpg`) resolved."""
    essence = mime_type.split(";", 1)[0].strip().lower()
    return _ALIASES.get(essence, essence)


def is_text_type(mime_type: str) -> bool:
    """Whether a (normalised) MIME type is text the model can read as such."""
    return mime_type.startswith("text/") or mime_type in _TEXT_TYPES or mime_type.endswith(_TEXT_SUFFIXES)


def attachment_size(attachment: Attachment) -> int | None:
    """The byte size the upload service reported (`metadata["size"]`), if known."""
    size = (attachment.metadata or {}).get(SIZE_KEY)
    return size if isinstance(size, int) and not isinstance(size, bool) and size >= 0 else None


def envelope(name: str, mime_type: str, size: int | None, body: str) -> str:
    """`<attachment name=".." type=".." size="N bytes">body</attachment>` (values HTML-escaped)."""
    attributes = f'name="{html.escape(" ".join(name.split()), quote=True)}" type="{html.escape(mime_type)}"'
    if size is not None:
        attributes += f' size="{size} bytes"'
    return f"<attachment {attributes}>{body}</attachment>"


@dataclass(frozen=True, slots=True)
class AttachmentContent:
    """What one attachment contributes: an image, a text, or only a description (`note`)."""

    attachment: Attachment
    mime_type: str
    size: int | None
    image_url: str | None = None
    """`data:<type>;base64,…` of an inlined image (encoded once, however often it is rendered)."""
    text: str | None = None
    truncated: bool = False
    note: str | None = None
    """Why the content is not included (set exactly when `image_url` and `text` are None)."""
    text_chars: int = 0
    """The character limit a truncated text was cut at (for the truncation line)."""

    def envelope(self) -> str:
        """The `input_text` that names the attachment (and holds a text file's content)."""
        if self.image_url is not None:
            body = IMAGE_SHOWN_NEXT
        elif self.text is not None:
            cut = f"(truncated: only the first {self.text_chars} characters are included)\n"
            text = _CLOSING_TAG.sub(lambda match: f"<\\/{match.group(1)}", self.text)
            body = f"\n{text}\n" + (cut if self.truncated else "")
        else:
            body = f"({self.note})"
        return envelope(self.attachment.name, self.mime_type, self.size, body)

    def envelope_part(self) -> ResponseInputTextParam:
        return ResponseInputTextParam(type="input_text", text=self.envelope())

    def image_part(self) -> ResponseInputImageParam | None:
        """The `input_image` part with a `data:` URL, for an inlined image."""
        if self.image_url is None:
            return None
        return ResponseInputImageParam(type="input_image", detail="auto", image_url=self.image_url)

    def parts(self) -> list[ResponseInputContentParam]:
        """Envelope, then the image if there is one."""
        image = self.image_part()
        return [self.envelope_part()] if image is None else [self.envelope_part(), image]


@dataclass(frozen=True, slots=True)
class _Read:
    """A planned read: budget already reserved."""

    attachment: Attachment
    reader: AttachmentReader
    mime_type: str
    size: int | None
    kind: Literal["image", "text"]
    max_bytes: int


class AttachmentInputs:
    """Loads the attachments of one turn, each once, within the turn's budget.

    One instance per turn (it holds the caller's reader, the remaining budget and what was read):
    never share it between turns or requests.
    """

    def __init__(self, reader: AttachmentReader | None, limits: AttachmentLimits | None = None) -> None:
        self._reader = reader
        self.limits = limits or AttachmentLimits()
        self._budget = self.limits.turn_bytes
        self._loaded: dict[str, AttachmentContent] = {}
        self._semaphore = asyncio.Semaphore(self.limits.concurrent_reads)
        self._warned_no_reader = False

    async def prefetch(self, attachments: Iterable[Attachment]) -> None:
        """Load `attachments` concurrently; the budget is granted in the order given (newest first)."""
        planned: dict[str, _Read | AttachmentContent] = {}
        for attachment in attachments:
            if attachment.id not in self._loaded and attachment.id not in planned:
                planned[attachment.id] = self._plan(attachment)
        results = await asyncio.gather(*(self._finish(plan) for plan in planned.values()))
        self._loaded.update(zip(planned, results, strict=True))

    async def content(self, attachment: Attachment) -> AttachmentContent:
        """The attachment's content: prefetched, or read now (within what is left of the budget)."""
        loaded = self._loaded.get(attachment.id)
        if loaded is None:
            loaded = await self._finish(self._plan(attachment))
            self._loaded[attachment.id] = loaded
        return loaded

    def _plan(self, attachment: Attachment) -> _Read | AttachmentContent:
        """Decide, without I/O, whether and how much to read; reserve that much budget."""
        mime = mime_essence(attachment.mime_type)
        size = attachment_size(attachment)

        def described(note: str) -> AttachmentContent:
            return AttachmentContent(attachment, mime, size, note=note)

        kind: Literal["image", "text"]
        if mime in MODEL_IMAGE_TYPES:
            kind = "image"
            if not self.limits.inline_images:
                return described(NO_IMAGES_NOTE)
            limit = self.limits.image_bytes
            if size is not None and size > limit:
                return described(f"image not included: larger than the {_amount(limit)} limit for images")
            if size == 0:
                return described(EMPTY_NOTE)
            max_bytes = size if size is not None else limit + 1  # one more byte tells "too large"
        elif is_text_type(mime):
            kind = "text"
            if size == 0:
                return AttachmentContent(attachment, mime, size, text="")
            limit = self.limits.text_bytes
            max_bytes = min(size, limit) if size is not None else limit + 1
        else:
            return described(BINARY_NOTE)
        if self._reader is None:
            if not self._warned_no_reader:
                logger.warning("No attachment reader for this turn: attachments are described, not read")
                self._warned_no_reader = True
            return described(NO_READER_NOTE)
        if max_bytes > self._budget:
            return described(OVER_BUDGET_NOTE)
        self._budget -= max_bytes
        return _Read(attachment, self._reader, mime, size, kind, max_bytes)

    async def _finish(self, plan: _Read | AttachmentContent) -> AttachmentContent:
        if isinstance(plan, AttachmentContent):
            return plan
        try:
            async with self._semaphore:
                data = await plan.reader.read(plan.attachment.id, plan.max_bytes)
        except Exception:
            logger.warning(
                "Could not read attachment %s for the model input; describing it instead",
                plan.attachment.id,
                exc_info=True,
            )
            return AttachmentContent(plan.attachment, plan.mime_type, plan.size, note=UNREADABLE_NOTE)
        return self._image(plan, data) if plan.kind == "image" else self._text(plan, data)

    def _image(self, plan: _Read, data: bytes) -> AttachmentContent:
        def described(note: str) -> AttachmentContent:
            return AttachmentContent(plan.attachment, plan.mime_type, plan.size, note=note)

        limit = self.limits.image_bytes
        if len(data) > limit:
            return described(f"image not included: larger than the {_amount(limit)} limit for images")
        if not data:
            return described(EMPTY_NOTE)
        if plan.size is not None and len(data) < plan.size:
            # A partial image would make the provider reject the whole request.
            logger.warning("Attachment %s: read %d of %d bytes", plan.attachment.id, len(data), plan.size)
            return described(UNREADABLE_NOTE)
        url = f"data:{plan.mime_type};base64,{base64.b64encode(data).decode('ascii')}"
        return AttachmentContent(plan.attachment, plan.mime_type, len(data), image_url=url)

    def _text(self, plan: _Read, data: bytes) -> AttachmentContent:
        limit = self.limits.text_bytes
        more = len(data) > limit or (plan.size is not None and plan.size > len(data))
        data = data[:limit]
        # An incremental decoder holds back a multi-byte character cut at the end of a partial read
        # instead of turning it into U+FFFD.
        text = codecs.getincrementaldecoder("utf-8")(errors="replace").decode(data, final=not more)
        text = text.removeprefix("\ufeff")
        if len(text) > self.limits.text_chars:
            text, more = text[: self.limits.text_chars], True
        size = plan.size if plan.size is not None else (None if more else len(data))
        return AttachmentContent(
            plan.attachment,
            plan.mime_type,
            size,
            text=text,
            truncated=more,
            text_chars=self.limits.text_chars,
        )


def _amount(size: int) -> str:
    """A byte count for a sentence: `4 MiB`, `512 KiB`, `300 bytes`."""
    for unit, factor in (("MiB", MiB), ("KiB", 1024)):
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size} bytes"
