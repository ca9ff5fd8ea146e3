"""Switchboard's own offline models, for apps that bring none: no network, no key, deterministic.

- `OfflineModel` answers every call with a short note that no LLM provider is configured, quoting
  the newest user message, so an app without an offline model of its own still converses (its
  tools are never called: configure a provider, or give the app an `offline_model`).
- `OfflineTitleModel` answers the title agent: the first ~6 words of the first user message.
"""

from __future__ import annotations

from typing import Final

from agents import Handoff, Tool
from agents.items import TResponseInputItem

from switchboard.app.offline import Reply, Say, ScriptedModel, user_texts

NO_PROVIDER: Final = (
    "No language model is configured on this server (set OPENAI_API_KEY, GEMINI_API_KEY or "
    "OPENAI_BASE_URL), so this is an offline answer."
)
_QUOTE_WORDS: Final = 24


class OfflineModel(ScriptedModel):
    """Says that it is offline and what it was asked (module docstring)."""

    def reply(
        self,
        instructions: str | None,
        input: str | list[TResponseInputItem],
        tools: list[Tool],
        handoffs: list[Handoff],
    ) -> Reply:
        texts = user_texts(input)
        words = texts[-1].split() if texts else []
        if not words:
            return Say(NO_PROVIDER)
        quoted = " ".join(words[:_QUOTE_WORDS]) + ("…" if len(words) > _QUOTE_WORDS else "")
        return Say(f'{NO_PROVIDER} You said: "{quoted}"')


class OfflineTitleModel(ScriptedModel):
    """Answers the title agent with the first ~6 words of the first user message."""

    def __init__(self, max_words: int = 6) -> None:
        super().__init__()
        self.max_words = max_words

    def reply(
        self,
        instructions: str | None,
        input: str | list[TResponseInputItem],
        tools: list[Tool],
        handoffs: list[Handoff],
    ) -> Reply:
        texts = user_texts(input)
        first = texts[0] if texts else ""
        title = " ".join(first.split()[: self.max_words]).rstrip(" .,;:!?…-")
        return Say(title[:1].upper() + title[1:] if title else "New conversation")
