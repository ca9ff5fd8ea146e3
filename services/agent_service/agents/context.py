"""The run context every agent, instruction function and tool of one turn receives.

It is passed as `Runner.run_streamed(..., context=AgentContext(...))` and reaches code only as
`RunContextWrapper[AgentContext]`: the Agents SDK never serialises it, so the tenant, user and role
cannot leak into a model request or a tool's JSON schema, and the model cannot forge them. Tenant
isolation is therefore enforced in code (tools read `ctx.context.principal.tenant`), not by asking
the model nicely. It also carries the services the tools need (the ERP directory), so the agents
and tools are built once per process and shared by every turn.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from chatkit.types import ThreadStreamEvent

from services.agent_service.agents.erp import ErpDirectory
from services.common.auth import Principal

EventSink = Callable[[ThreadStreamEvent], None]
"""Where tools put the ChatKit events they produce (progress updates, widgets)."""


def _discard(event: ThreadStreamEvent) -> None:
    """The sink of a context used outside a streamed turn (e.g. a test calling a tool directly)."""


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

    def emit(self, event: ThreadStreamEvent) -> None:
        """Send a ChatKit event to the client (non-blocking; the queue behind it is unbounded)."""
        self.sink(event)
