"""`App`: everything an adopter brings to Switchboard, in one object the agent service loads.

    app = App(name="helpdesk", agent=router, startup=open_state, shutdown=close_state)

The agent service loads it from `SWITCHBOARD_APP=package.module:attribute` (an `App`, or a function
without arguments that returns one), calls `startup` once before serving, runs every turn with
the starting agent for the verified caller, dispatches widget actions to the registered handlers,
and calls `shutdown` once after the last request.

Models: an agent with `model=None` runs on the configured provider's default model
(`OPENAI_DEFAULT_MODEL`, `GEMINI_DEFAULT_MODEL`, any OpenAI-compatible base URL); a string picks
another model of that provider (`model="gpt-4.1"`); a `Model` instance is used as is. Without a
provider (offline), every agent runs on `offline_model(environment)` when the app has one, else on
Switchboard's plain offline model.

Dictation (ChatKit's `input.transcribe`): the audio goes to the configured provider's
OpenAI-compatible `/audio/transcriptions` endpoint (`SWITCHBOARD_TRANSCRIBE_MODEL`), unless the app
brings its own `transcribe`; offline, the text is a deterministic placeholder.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Generic, Literal

from agents import Agent, Model
from pydantic import BaseModel

from switchboard.app._actions import ActionRoute, PayloadT, StreamingHandler, SyncHandler
from switchboard.app._audio import TranscribeFunction
from switchboard.app._context import Caller, ChatContext, StateT

Provider = Literal["openai", "gemini", "local"]

TITLE_INSTRUCTIONS: Final = (
    "Write a short title, at most six words, for a conversation that starts with the user's message. "
    "Reply with the title only: no quotes, no trailing punctuation."
)
DEFAULT_TITLE_AGENT: Final = Agent[Any](name="Title writer", instructions=TITLE_INSTRUCTIONS)
"""Names a new thread after its first user message, on the configured provider's default model."""


@dataclass(frozen=True, slots=True)
class AppEnvironment:
    """What the agent service tells an app about where it runs (given to `startup`)."""

    data_dir: Path
    """The service's data directory (`SWITCHBOARD_DATA_DIR`): where embedded files may live."""
    provider: Provider
    """The configured LLM provider; `local` means offline (no key, no network)."""
    offline_token_delay_s: float
    """The pause between streamed words an offline model should make (`SWITCHBOARD_LOCAL_TOKEN_DELAY_MS`)."""


StartingAgent = Agent[ChatContext[StateT]] | Callable[[Caller], Agent[ChatContext[StateT]]]


class App(Generic[StateT]):
    """An app: its agents, action handlers, models and lifecycle (module docstring).

    - `agent`: the starting agent (with its handoffs, the whole graph), or a function of the
      verified caller that returns it, so tenants or roles can get different agents. The function
      runs on every turn: return agents built once, not new ones.
    - `startup(environment)`: opens the app's resources and returns its state, which reaches
      every tool as `ctx.context.state` and every action handler as `ctx.state`. If it raises,
      the agent service does not start and says why.
    - `shutdown(state)`: closes them when the service stops.
    - `title_agent`: names untitled threads after their first message; None names none.
    - `offline_model`: the model every agent runs on when no provider is configured.
    - `transcribe(audio)`: dictation by the app itself, instead of the provider's
      `/audio/transcriptions` (or the offline placeholder). It receives an `AudioInput` (bytes,
      MIME type and the verified caller; already checked for size and media type) and returns the
      text the composer shows. Raise `InvalidRequest` for audio it cannot use (HTTP 400) and
      `Unavailable` when its backend fails (HTTP 503); None (the default) uses the provider.

    A turn that continues a conversation starts with the agent that answered last (the active agent
    after a handoff), found by name in the starting agent's handoff graph; names must be unique in
    that graph.
    """

    def __init__(
        self,
        *,
        name: str,
        agent: StartingAgent[StateT],
        startup: Callable[[AppEnvironment], Awaitable[StateT]] | None = None,
        shutdown: Callable[[StateT], Awaitable[None]] | None = None,
        title_agent: Agent[Any] | None = DEFAULT_TITLE_AGENT,
        offline_model: Callable[[AppEnvironment], Model] | None = None,
        transcribe: TranscribeFunction | None = None,
    ) -> None:
        self.name = name
        self._agent = agent
        self.startup = startup
        self.shutdown = shutdown
        self.title_agent = title_agent
        self.offline_model = offline_model
        self.transcribe = transcribe
        self._routes: dict[str, ActionRoute[StateT]] = {}

    def starting_agent(self, caller: Caller) -> Agent[ChatContext[StateT]]:
        """The agent a new conversation of `caller` starts with."""
        return self._agent if isinstance(self._agent, Agent) else self._agent(caller)

    # ------------------------------------------------------------------------------------ actions

    def action(
        self, action_type: str, *, payload: type[PayloadT]
    ) -> Callable[[StreamingHandler[StateT, PayloadT]], StreamingHandler[StateT, PayloadT]]:
        """Register the streaming handler of `action_type` (see `switchboard.app` actions)."""

        def register(handler: StreamingHandler[StateT, PayloadT]) -> StreamingHandler[StateT, PayloadT]:
            self._route(action_type, payload).streaming = handler
            return handler

        return register

    def sync_action(
        self, action_type: str, *, payload: type[PayloadT]
    ) -> Callable[[SyncHandler[StateT, PayloadT]], SyncHandler[StateT, PayloadT]]:
        """Register the synchronous handler of `action_type`."""

        def register(handler: SyncHandler[StateT, PayloadT]) -> SyncHandler[StateT, PayloadT]:
            self._route(action_type, payload).sync = handler
            return handler

        return register

    def route(self, action_type: str) -> ActionRoute[StateT] | None:
        """The handlers registered for `action_type`, if any."""
        return self._routes.get(action_type)

    @property
    def action_types(self) -> frozenset[str]:
        return frozenset(self._routes)

    def _route(self, action_type: str, payload: type[BaseModel]) -> ActionRoute[StateT]:
        if not action_type:
            raise ValueError("an action type must not be empty")
        route = self._routes.setdefault(action_type, ActionRoute(payload=payload))
        if route.payload is not payload:
            raise ValueError(f"action {action_type!r} is registered with two payload models")
        return route
