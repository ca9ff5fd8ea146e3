"""Choose the model behind the agents from configuration.

Provider rules (`LLM_PROVIDER=openai|gemini|local`):

- `openai`: `OPENAI_DEFAULT_MODEL` with `OPENAI_API_KEY`, at `OPENAI_BASE_URL` when set (any
  OpenAI-compatible server; the key may then be omitted for servers that need none);
- `gemini`: `GEMINI_DEFAULT_MODEL` with `GEMINI_API_KEY`, at `GEMINI_BASE_URL` (Gemini's
  OpenAI-compatible endpoint);
- `local`: the offline demo model (`local.py`), no key;
- unset: `openai` if `OPENAI_API_KEY` is set, else `gemini` if `GEMINI_API_KEY` is set, else `local`.

An explicitly chosen provider without its key is a configuration error (`ValueError`), never a
silent fallback to the demo model.

Every remote provider goes through `OpenAIChatCompletionsModel`, not the Responses model: Chat
Completions is the API that every OpenAI-compatible server (vLLM, Ollama, LiteLLM proxy, …) and
Gemini's compatibility layer speak, so one code path serves them all and the fake server in
`tests/fakes/` exercises exactly what production runs. What we give up is what the Responses API adds
on top (server-side conversation state, stable output item ids, hosted tools); we do not need it:
the thread store holds the history, and the responder mints its own ChatKit item ids instead of the
SDK's `__fake_id__` placeholders.

Tracing is disabled globally (`agents.set_tracing_disabled(True)`): the SDK's default exporter
uploads traces to OpenAI, which would leak conversation data to a third party for the Gemini and
local-server cases and fails offline. Turning it on for the real OpenAI API is a deliberate future
choice, not a default.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

from agents import Model, OpenAIChatCompletionsModel, set_tracing_disabled
from openai import AsyncOpenAI

from services.agent_service.models.local import LocalDemoModel, LocalTitleModel
from services.common.config import Settings

logger = logging.getLogger(__name__)

Provider = Literal["openai", "gemini", "local"]

_NO_KEY_PLACEHOLDER = "unused"
"""API key sent to a keyless OpenAI-compatible server (the client refuses an empty key)."""


@dataclass(frozen=True, slots=True)
class ModelChoice:
    """The models the agent team runs on, and where they come from."""

    model: Model
    """Model of the router and the specialists."""
    title_model: Model
    """Model of the thread-title agent (the same instance for remote providers)."""
    provider: Provider
    is_local: bool
    client: AsyncOpenAI | None = None
    """The HTTP client of a remote provider, closed by `aclose()`."""

    async def aclose(self) -> None:
        if self.client is not None:
            await self.client.close()


def resolve_provider(settings: Settings) -> Provider:
    """Apply the provider rules of the module docstring (explicit choice first, then keys)."""
    if settings.llm_provider is not None:
        return settings.llm_provider
    if settings.openai_api_key:
        return "openai"
    if settings.gemini_api_key:
        return "gemini"
    return "local"


def build_model(settings: Settings) -> ModelChoice:
    """Build the models for the configured provider (see the module docstring)."""
    set_tracing_disabled(True)
    provider = resolve_provider(settings)
    match provider:
        case "openai":
            if not settings.openai_api_key and not settings.openai_base_url:
                raise ValueError(
                    "LLM_PROVIDER=openai needs OPENAI_API_KEY (or OPENAI_BASE_URL for a keyless "
                    "OpenAI-compatible server)"
                )
            client = AsyncOpenAI(
                api_key=settings.openai_api_key or _NO_KEY_PLACEHOLDER,
                base_url=settings.openai_base_url or None,
            )
            return _remote(provider, settings.openai_default_model, client)
        case "gemini":
            if not settings.gemini_api_key:
                raise ValueError("LLM_PROVIDER=gemini needs GEMINI_API_KEY")
            client = AsyncOpenAI(api_key=settings.gemini_api_key, base_url=settings.gemini_base_url)
            return _remote(provider, settings.gemini_default_model, client)
        case "local":
            reason = (
                "LLM_PROVIDER=local"
                if settings.llm_provider == "local"
                else "No OPENAI_API_KEY or GEMINI_API_KEY"
            )
            logger.warning("%s: using the offline local demo model (deterministic canned answers)", reason)
            delay_s = settings.local_token_delay_ms / 1000
            return ModelChoice(
                model=LocalDemoModel(token_delay_s=delay_s),
                title_model=LocalTitleModel(),
                provider="local",
                is_local=True,
            )


def _remote(provider: Provider, model_name: str, client: AsyncOpenAI) -> ModelChoice:
    model = OpenAIChatCompletionsModel(model=model_name, openai_client=client)
    logger.info("Using %s model %s at %s", provider, model_name, client.base_url)
    return ModelChoice(model=model, title_model=model, provider=provider, is_local=False, client=client)
