"""The run context every agent, instruction function and tool of one turn receives.

It is passed as `Runner.run_streamed(..., context=AgentContext(...))` and reaches code only as
`RunContextWrapper[AgentContext]`: the Agents SDK never serialises it, so the tenant, user and role
cannot leak into a model request or a tool's JSON schema, and the model cannot forge them. Tenant
isolation is therefore enforced in code (tools read `ctx.context.principal.tenant`), not by asking
the model nicely. It also carries the services the tools need (the ERP directory), so the agents
and tools are built once per process and shared by every turn.

It is also where a turn records that it is waiting for the user (see `interactive.py`): a client
tool call for the browser to run (`client_tool_call`, turned into a pending `client_tool_call` item
by the responder at the end of the run), or a structured input form already emitted
(`structured_input_id`). Both are per turn, because a new context is built for every turn.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from chatkit.types import ThreadStreamEvent

from services.agent_service.agents.erp import ErpDirectory
from services.common.auth import Principal

EventSink = Callable[[ThreadStreamEvent], None]
"""Where tools put the ChatKit events they produce (progress updates, widgets)."""


def _discard(event: ThreadStreamEvent) -> None:
    """The sink of a context used outside a streamed turn (e.g. a test calling a tool directly)."""


@dataclass(frozen=True, slots=True)
class ClientToolRequest:
    """A tool the client (the user's browser) must run: `chatkit.agents.ClientToolCall` plus the
    call id of the Agents SDK function call that asked for it.

    The call id is what ties the client's answer back to the model's call: the pending
    `ClientToolCallItem` carries it, and when the item is completed the converter replays the call
    as `function_call` + `function_call_output` with this id.
    """

    name: str
    arguments: dict[str, Any]
    call_id: str


@dataclass(slots=True)
class AgentContext:
    """Who asks, where, the services tools use, and the channel for the ChatKit events they produce."""

    principal: Principal
    locale: str
    thread_id: str
    erp: ErpDirectory
    sink: EventSink = field(default=_discard, repr=False)
    """Set by the responder: events are forwarded to the client live, interleaved in order with
    the model's own stream (a progress update arrives while its tool runs, not after)."""
    client_tool_call: ClientToolRequest | None = None
    """The client tool this turn asks the browser to run (at most one per turn, as in ChatKit)."""
    structured_input_id: str | None = None
    """The id of the structured input item this turn showed (at most one form per turn)."""

    def emit(self, event: ThreadStreamEvent) -> None:
        """Send a ChatKit event to the client (non-blocking; the queue behind it is unbounded)."""
        self.sink(event)
