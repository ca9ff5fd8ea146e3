"""The agent team: a router that hands off to one of three specialists, and the title agent.

Routing uses SDK handoffs rather than agents-as-tools: the specialist *takes over* the conversation,
so its tokens stream straight to the user after one tiny router call, and `result.last_agent` tells
who answered. The responder stores that specialist in the thread metadata and starts the next turn
with it, so a conversation does not pay for routing on every message.

To keep a conversation from being stuck with the wrong specialist, each specialist can hand off to
its two peers when a request clearly belongs to them (it never hands back to the router).

Instructions are functions of the run context, evaluated on every model call: they carry the
caller's tenant, user, role and locale (the `Caller:` line), which is how the model learns who it
talks to. The same values reach the tools through `RunContextWrapper[AgentContext]`, never through
the tools' JSON schemas.

Besides the ERP tools, every specialist can ask the user's browser for its local time (a ChatKit
client tool) and the tech specialist can show a ticket form (a structured input). Both end the run
to wait for the user (`StopAtTools`, see `interactive.py`); the specialist stays active, so the
same one picks up the answer on the next turn.

Agents are stateless and built once per process; everything per-turn lives in `AgentContext`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from agents import Agent, Handoff, Model, RunContextWrapper, Tool, handoff

from services.agent_service.agents.context import AgentContext
from services.agent_service.agents.interactive import (
    DEFAULT_PRIORITY,
    LOCAL_TIME_TOOL,
    STOP_AT_INTERACTIVE_TOOLS,
    TICKET_TOOL,
    ask_ticket_details,
    get_user_local_time,
)
from services.agent_service.agents.tools import ERP_TOOLS

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SpecialistSpec:
    key: str
    """Stable id stored in the thread metadata (`ACTIVE_AGENT_KEY`)."""
    label: str
    """What users see: "Billing" → "Billing specialist"."""
    focus: str

    @property
    def name(self) -> str:
        return f"{self.label} specialist"


SPECIALISTS: Final = (
    SpecialistSpec("billing", "Billing", "handling invoices, payments, refunds, prices and sales orders"),
    SpecialistSpec(
        "tech",
        "Tech",
        "handling errors, bugs, crashes, logins, passwords, installs, APIs and support tickets",
    ),
    SpecialistSpec("general", "General", "handling everything else, including employee look-ups"),
)
ROUTER_NAME: Final = "Router"

EXTRA_TOOLS: Final[dict[str, tuple[Tool, ...]]] = {"tech": (ask_ticket_details,)}
"""Tools only one specialist has, besides the ERP tools and the client tool every one has."""

_LOCAL_TIME_RULE: Final = (
    f"For the user's local time, date or time zone, call {LOCAL_TIME_TOOL}: their browser answers "
    "with the tool output, then tell them."
)
_TICKET_RULE: Final = (
    f"When the user wants to open or file a support ticket, call {TICKET_TOOL} and write nothing "
    "else. When the ticket form comes back as a structured input, confirm that the ticket is open "
    f"with its priority ({DEFAULT_PRIORITY} if skipped) and details."
)


def caller_line(context: AgentContext) -> str:
    """`Caller: tenant=acme; user=ada; role=hr; locale=en-US` (parsed by the local demo model)."""
    principal = context.principal
    return (
        f"Caller: tenant={principal.tenant}; user={principal.user}; role={principal.role}; "
        f"locale={context.locale}"
    )


def router_instructions(ctx: RunContextWrapper[AgentContext], agent: Agent[AgentContext]) -> str:
    areas = " ".join(f"{spec.label}: {spec.focus}." for spec in SPECIALISTS)
    return (
        "You are the Switchboard router. Never answer the user yourself: transfer every request to "
        f"exactly one specialist. {areas}\n{caller_line(ctx.context)}"
    )


def specialist_instructions(
    spec: SpecialistSpec,
) -> Callable[[RunContextWrapper[AgentContext], Agent[AgentContext]], str]:
    rules = _LOCAL_TIME_RULE
    if ask_ticket_details in EXTRA_TOOLS.get(spec.key, ()):
        rules += f" {_TICKET_RULE}"

    def instructions(ctx: RunContextWrapper[AgentContext], agent: Agent[AgentContext]) -> str:
        return (
            f"You are the {spec.name} of Switchboard, {spec.focus}. Answer concisely, in the "
            f"caller's locale ({ctx.context.locale}). Use lookup_employee and lookup_order for "
            "employee ids (E1001) and order ids (SO-1001); never guess ERP data and never reveal "
            "what the tools did not return. If a request clearly belongs to another specialist, "
            f"transfer to them. {rules}\n{caller_line(ctx.context)}"
        )

    return instructions


def _on_handoff(spec: SpecialistSpec) -> Callable[[RunContextWrapper[Any]], None]:
    def log(ctx: RunContextWrapper[Any]) -> None:
        context = ctx.context
        if isinstance(context, AgentContext):
            logger.info(
                "Handing thread %s (tenant %s) to the %s",
                context.thread_id,
                context.principal.tenant,
                spec.name,
            )

    return log


def _handoff(spec: SpecialistSpec, agent: Agent[AgentContext]) -> Handoff[AgentContext, Agent[AgentContext]]:
    return handoff(agent, on_handoff=_on_handoff(spec))


@dataclass(frozen=True, slots=True)
class Team:
    router: Agent[AgentContext]
    specialists: dict[str, Agent[AgentContext]]
    """Specialist key ("billing", "tech", "general") → agent."""

    def key_of(self, agent: Agent[Any]) -> str | None:
        """The specialist key of `agent`, None for the router or a stranger."""
        return next((key for key, member in self.specialists.items() if member.name == agent.name), None)

    def starting_agent(self, active: object) -> Agent[AgentContext]:
        """The specialist named by the thread metadata, else the router."""
        if isinstance(active, str) and active in self.specialists:
            return self.specialists[active]
        if active is not None:
            logger.warning("Unknown active agent %r in thread metadata; starting with the router", active)
        return self.router


def spec_for(key: str) -> SpecialistSpec:
    return next(spec for spec in SPECIALISTS if spec.key == key)


def build_team(model: Model) -> Team:
    """The router and the specialists, all on `model`.

    Every specialist stops its run at the interactive tools (`STOP_AT_INTERACTIVE_TOOLS`); its
    other tools keep the default behaviour (the model runs again with their output).
    """
    specialists = {
        spec.key: Agent[AgentContext](
            name=spec.name,
            handoff_description=f"The {spec.name}, {spec.focus}.",
            instructions=specialist_instructions(spec),
            tools=[*ERP_TOOLS, get_user_local_time, *EXTRA_TOOLS.get(spec.key, ())],
            tool_use_behavior=STOP_AT_INTERACTIVE_TOOLS,
            model=model,
        )
        for spec in SPECIALISTS
    }
    for spec in SPECIALISTS:
        specialists[spec.key].handoffs = [
            _handoff(peer, specialists[peer.key]) for peer in SPECIALISTS if peer.key != spec.key
        ]
    router = Agent[AgentContext](
        name=ROUTER_NAME,
        instructions=router_instructions,
        handoffs=[_handoff(spec, specialists[spec.key]) for spec in SPECIALISTS],
        model=model,
    )
    return Team(router=router, specialists=specialists)


TITLE_INSTRUCTIONS: Final = (
    "Write a short title, at most six words, for a conversation that starts with the user's message. "
    "Reply with the title only: no quotes, no trailing punctuation."
)


def build_title_agent(model: Model) -> Agent[None]:
    """An agent that names a thread from its first user message."""
    return Agent[None](name="Title writer", instructions=TITLE_INSTRUCTIONS, model=model)
