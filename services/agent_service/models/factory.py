"""Choose the model behind the agents from configuration.

Provider rules (`LLM_PROVIDER=openai|gemini|local`):

- `openai`: `OPENAI_DEFAULT_MODEL` with `OPENAI_API_KEY`, at `OPENAI_BASE_URL` when set (any
  OpenAI-compatible server; the key may then be omitted for servers that need none);
- `gemini`: `GEMINI_DEFAULT_MODEL` with `GEMINI_API_KEY`, at `GEMINI_BASE_URL` (Gemini's
  OpenAI-compatible endpoint);
- `local`: offline, no key: the app's own offline model (`App.offline_model`), else Switchboard's
  plain one (`offline.py`);
- unset: `openai` if `OPENAI_API_KEY` is set, else `gemini` if `GEMINI_API_KEY` is set, else `local`.

An explicitly chosen provider without its key is a configuration error (`ValueError`), never a
silent fallback to an offline model.

`ConfiguredModels` is the Agents SDK `ModelProvider` of every run: an agent with `model=None` gets the
provider's default model, a model name gets that model of the same provider (one client, one model
object per name), and a `Model` instance set on an agent bypasses the provider altogether. Offline,
every name resolves to the offline model.

Every remote provider goes through `OpenAIChatCompletionsModel`, not the Responses model: Chat
Completions is the API that every OpenAI-compatible server (vLLM, Ollama, LiteLLM proxy, …) and
Gemini's compatibility layer speak, so one code path serves them all and the fake server in
`tests/fakes/` exercises exactly what production runs. What we give up is what the Responses API adds
on top (server-side conversation state, stable output item ids, hosted tools); we do not need it:
the thread store holds the history, and the responder mints its own ChatKit item ids instead of the
SDK's `__fake_id__` placeholders.

The SDK's own trace processors are replaced whatever the configuration (`configure_agents_tracing`):
its default exporter uploads traces to OpenAI, which would leak conversation data to a third party
for the Gemini and local-server cases and fails offline. With OpenTelemetry tracing off (the
default) SDK tracing is disabled and has no processor at all; with it on
(`services/common/tracing.py`), SDK spans go only to `agents/otel_bridge.py`, into the service's
OpenTelemetry traces. Sending traces to OpenAI would be a deliberate future choice, not a default.
"""

from __future__ import annotations

import logging
from typing import Literal

from agents import (
    Model,
    ModelProvider,
    OpenAIChatCompletionsModel,
    set_trace_processors,
    set_tracing_disabled,
)
from openai import AsyncOpenAI

from services.agent_service.models.offline import OfflineModel, OfflineTitleModel
from services.common import tracing
from services.common.config import Settings

logger = logging.getLogger(__name__)

Provider = Literal["openai", "gemini", "local"]

_NO_KEY_PLACEHOLDER = "unused"
"""API key sent to a keyless OpenAI-compatible server (the client refuses an empty key)."""


class ConfiguredModels(ModelProvider):
    """The models of the configured provider, by name (module docstring)."""

    def __init__(
        self,
        provider: Provider,
        *,
        default_name: str | None = None,
        client: AsyncOpenAI | None = None,
        offline: Model | None = None,
    ) -> None:
        self.provider = provider
        self.default_name = default_name
        self.client = client
        self._offline = offline or OfflineModel()
        self._models: dict[str, Model] = {}

    @property
    def is_local(self) -> bool:
        return self.client is None

    def get_model(self, model_name: str | None) -> Model:
        if self.client is None:
            return self._offline
        name = model_name or self.default_name or ""
        model = self._models.get(name)
        if model is None:
            model = self._models[name] = OpenAIChatCompletionsModel(model=name, openai_client=self.client)
        return model

    def with_offline(self, offline: Model) -> ConfiguredModels:
        """The same provider (same client) with another offline model."""
        twin = ConfiguredModels(
            self.provider, default_name=self.default_name, client=self.client, offline=offline
        )
        twin._models = self._models
        return twin

    async def aclose(self) -> None:
        if self.client is not None:
            await self.client.close()


def configure_agents_tracing() -> bool:
    """Replace the SDK's trace processors (module docstring); whether SDK tracing is on."""
    if not tracing.enabled():
        set_trace_processors([])
        set_tracing_disabled(True)
        return False
    from services.agent_service.agents.otel_bridge import install_bridge

    install_bridge()
    return True


def resolve_provider(settings: Settings) -> Provider:
    """Apply the provider rules of the module docstring (explicit choice first, then keys)."""
    if settings.llm_provider is not None:
        return settings.llm_provider
    if settings.openai_api_key:
        return "openai"
    if settings.gemini_api_key:
        return "gemini"
    return "local"


def build_models(settings: Settings) -> ConfiguredModels:
    """The configured provider's models (see the module docstring); offline, the plain offline model."""
    configure_agents_tracing()
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
            logger.warning("%s: agents run on an offline model (deterministic answers)", reason)
            return ConfiguredModels("local")


def title_models(models: ConfiguredModels) -> ConfiguredModels:
    """The models of the title agent: the same provider, offline the first words of the message."""
    return models.with_offline(OfflineTitleModel())


def _remote(provider: Provider, model_name: str, client: AsyncOpenAI) -> ConfiguredModels:
    logger.info("Using %s model %s at %s", provider, model_name, client.base_url)
    return ConfiguredModels(provider, default_name=model_name, client=client)
