"""The app API of Switchboard: bring your own agents, tools, widgets and actions.

This package is the stable surface an app imports; nothing under `services` is part of it. An app
is an `App` object in your own package, loaded by the agent service from
`SWITCHBOARD_APP=your_package.module:app`:

    from agents import Agent, RunContextWrapper, function_tool
    from switchboard.app import App, ChatContext

    @function_tool
    async def order_status(ctx: RunContextWrapper[ChatContext[None]], order_id: str) -> str:
        \"\"\"The status of one of the caller's orders.\"\"\"
        ctx.context.progress(f"Looking up {order_id}…")
        return await my_backend.status(ctx.context.caller.tenant, order_id)  # verified tenant

    app = App(name="shop", agent=Agent(name="Shop assistant", instructions="…", tools=[order_status]))

- Tools are plain Agents SDK function tools. Their run context is a `ChatContext`: the verified
  `caller` (tenant, user, role, locale), the `thread_id`, the app's `state`, and helpers that talk
  to the user while the tool runs (`progress`, `show_widget`, `request_client_tool`, `show_form`).
- Widget actions go to handlers registered with `@app.action(type, payload=Model)` (streaming) or
  `@app.sync_action(...)`.
- Errors: raise a `SwitchboardError` (`InvalidRequest`, `NotFound`, `Forbidden`, `Unavailable`, …)
  from an action handler to show the user its message; from a tool, give the tool
  `failure_error_function=show_errors_to_user` so that the error ends the turn with that message
  instead of going back to the model.
- Dictation: `App(transcribe=...)` replaces the provider's transcription with the app's own
  (it receives an `AudioInput`).
- `switchboard.app.offline` builds deterministic offline models for demos and tests.

See the README section "Your own agents" for a walkthrough.
"""

from __future__ import annotations

import logging
from typing import Any

from agents import RunContextWrapper

from switchboard.app._actions import ActionContext, StreamingActionContext
from switchboard.app._app import DEFAULT_TITLE_AGENT, TITLE_INSTRUCTIONS, App, AppEnvironment, Provider
from switchboard.app._audio import AudioInput
from switchboard.app._context import (
    Caller,
    ChatContext,
    ClientToolRequest,
    stop_when_waiting_for_user,
    widget_item,
)
from switchboard.app._errors import (
    AlreadyExists,
    Busy,
    Forbidden,
    InvalidRequest,
    LimitExceeded,
    NotFound,
    PreconditionFailed,
    SwitchboardError,
    TimedOut,
    Unauthenticated,
    Unavailable,
)
from switchboard.app._messages import assistant_message_events

_log = logging.getLogger("switchboard.app")


def show_errors_to_user(ctx: RunContextWrapper[Any], error: Exception) -> str:
    """A tool's `failure_error_function`: a `SwitchboardError` ends the turn and its message is
    shown to the user (an `error` event); any other failure is logged and the model is told the
    tool failed, so it can say so or try another way."""
    if isinstance(error, SwitchboardError):
        raise error
    _log.error("A tool failed", exc_info=error)
    return "The tool failed. Please try again later."


__all__ = [
    "DEFAULT_TITLE_AGENT",
    "TITLE_INSTRUCTIONS",
    "ActionContext",
    "AlreadyExists",
    "App",
    "AppEnvironment",
    "AudioInput",
    "Busy",
    "Caller",
    "ChatContext",
    "ClientToolRequest",
    "Forbidden",
    "InvalidRequest",
    "LimitExceeded",
    "NotFound",
    "PreconditionFailed",
    "Provider",
    "StreamingActionContext",
    "SwitchboardError",
    "TimedOut",
    "Unauthenticated",
    "Unavailable",
    "assistant_message_events",
    "show_errors_to_user",
    "stop_when_waiting_for_user",
    "widget_item",
]
