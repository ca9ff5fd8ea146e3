"""The agent team: a router that hands off to one of three specialists, and the title agent.

Routing uses SDK handoffs rather than agents-as-tools: the specialist *takes over* the conversation,
so its tokens stream straight to the user after one tiny router call. Switchboard remembers the
agent a handoff went to and starts the next turn with it, so a conversation does not pay for
routing on every message.

To keep a conversation from being stuck with the wrong specialist, each specialist can hand off to
its two peers when a request clearly belongs to them (it never hands back to the router).

Instructions are functions of the run context, evaluated on every model call: they carry the
caller's tenant, user, role and locale (the `Caller:` line), which is how the model learns who it
talks to. The same values reach the tools through `RunContextWrapper[DemoContext]`, never through
the tools' JSON schemas.

Besides the ERP tools, every specialist can ask the user's browser for its local time (a ChatKit
client tool) and the tech specialist can show a ticket form (a structured input). Both end the run
to wait for the user (`stop_when_waiting_for_user`, see `interactive.py`); the specialist stays
active, so the same one picks up the answer on the next turn.

Agents are stateless and built once per process; everything per-turn lives in the `DemoContext`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from agents import Agent, Handoff, RunContextWrapper, Tool, handoff

from switchboard.app import ChatContext, stop_when_waiting_for_user
from switchboard.demo.interactive import (
    DEFAULT_PRIORITY,
    LOCAL_TIME_TOOL,
    TICKET_TOOL,
    ask_ticket_details,
    get_user_local_time,
)
from switchboard.demo.state import DemoContext
from switchboard.demo.tools import ERP_TOOLS

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SpecialistSpec:
    key: str
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


def caller_line(context: DemoContext) -> str:
    """`Caller: tenant=acme; user=ada; role=hr; locale=en-US` (parsed by the demo's offline model)."""
    caller = context.caller
    return f"Caller: tenant={caller.tenant}; user={caller.user}; role={caller.role}; locale={caller.locale}"


def router_instructions(ctx: RunContextWrapper[DemoContext], agent: Agent[DemoContext]) -> str:
    areas = " ".join(f"{spec.label}: {spec.focus}." for spec in SPECIALISTS)
    return (
        "You are the Switchboard router. Never answer the user yourself: transfer every request to "
        f"exactly one specialist. {areas}\n{caller_line(ctx.context)}"
    )


def specialist_instructions(
    spec: SpecialistSpec,
) -> Callable[[RunContextWrapper[DemoContext], Agent[DemoContext]], str]:
    rules = _LOCAL_TIME_RULE
    if ask_ticket_details in EXTRA_TOOLS.get(spec.key, ()):
        rules += f" {_TICKET_RULE}"

    def instructions(ctx: RunContextWrapper[DemoContext], agent: Agent[DemoContext]) -> str:
        return (
            f"You are the {spec.name} of Switchboard, {spec.focus}. Answer concisely, in the "
            f"caller's locale ({ctx.context.caller.locale}). Use lookup_employee and lookup_order for "
            "employee ids (E1001) and order ids (SO-1001); never guess ERP data and never reveal "
            "what the tools did not return. If a request clearly belongs to another specialist, "
            f"transfer to them. {rules}\n{caller_line(ctx.context)}"
        )

    return instructions


def _on_handoff(spec: SpecialistSpec) -> Callable[[RunContextWrapper[Any]], None]:
    def log(ctx: RunContextWrapper[Any]) -> None:
        context = ctx.context
        if isinstance(context, ChatContext):
            logger.info(
                "Handing thread %s (tenant %s) to the %s", context.thread_id, context.caller.tenant, spec.name
            )

    return log


def _handoff(spec: SpecialistSpec, agent: Agent[DemoContext]) -> Handoff[DemoContext, Agent[DemoContext]]:
    return handoff(agent, on_handoff=_on_handoff(spec))


def build_team() -> Agent[DemoContext]:
    """The router, with the specialists it hands off to, all on the configured model.

    Every specialist stops its run when a tool waits for the user (`stop_when_waiting_for_user`);
    its other tools keep the default behaviour (the model runs again with their output).
    """
    specialists = {
        spec.key: Agent[DemoContext](
            name=spec.name,
            handoff_description=f"The {spec.name}, {spec.focus}.",
            instructions=specialist_instructions(spec),
            tools=[*ERP_TOOLS, get_user_local_time, *EXTRA_TOOLS.get(spec.key, ())],
            tool_use_behavior=stop_when_waiting_for_user,
        )
        for spec in SPECIALISTS
    }
    for spec in SPECIALISTS:
        specialists[spec.key].handoffs = [
            _handoff(peer, specialists[peer.key]) for peer in SPECIALISTS if peer.key != spec.key
        ]
    router = Agent[DemoContext](
        name=ROUTER_NAME,
        instructions=router_instructions,
        handoffs=[_handoff(spec, specialists[spec.key]) for spec in SPECIALISTS],
    )
    return router
