"""Tools that end the turn to wait for the user: a client tool and a structured input form.

Both follow ChatKit's conventions, and the agents that offer them use
`tool_use_behavior=stop_when_waiting_for_user` (`switchboard.app`): the run ends right after such a
tool ran, without another model call, because the answer can only come from the user in a later
request.

**Client tool** (`get_user_local_time`, on every specialist) — ChatKit's client tool round trip:

1. the model calls the tool; the tool does not compute anything, it records the request (name,
   arguments and the SDK call id) with `ChatContext.request_client_tool`;
2. the run stops; at the end of the run Switchboard emits
   `thread.item.done(client_tool_call, status="pending", call_id=<SDK call id>)`, which the
   conversation stores. The ChatKit client runs its `onClientTool({name, params})` handler in the
   browser and posts `threads.add_client_tool_output {thread_id, result}`;
3. the conversation marks the call completed with `output=result` and runs the next turn (no new
   user message). chatkit's `ThreadItemConverter.client_tool_call_to_input` replays the completed
   call as `function_call` + `function_call_output(json.dumps(result))` with the same call id (the
   Chat Completions converter turns them into an assistant `tool_calls` message and a `tool`
   message), and the specialist kept in `ACTIVE_AGENT_KEY` answers from the output.

Only one client tool call per turn: a second call in the same turn is not recorded (the model is
told the browser was already asked).

**Structured input** (`ask_ticket_details`, on the tech specialist):

1. the model calls the tool; the tool shows the form with `ChatContext.show_form`
   (`thread.item.done(structured_input, status="pending")`) with two questions (priority: Low /
   Normal / High; details: free text), so the form appears while the run is still going;
2. the run stops; no assistant message follows (the form is the turn's last item);
3. the client posts `threads.add_structured_input`; the conversation sends
   `thread.item.replaced` with the answered (or skipped) item and runs the next turn, whose history
   ends with it. `SwitchboardConverter.structured_input_to_input` renders the questions, their ids,
   the options and the answers as a user-role text message, from which the specialist confirms
   the ticket (`DEFAULT_PRIORITY` when the priority was skipped).

At most one form per turn, like the client tool.

Failures of these tools are not turned into text for the model (`failure_error_function=None`):
since the run stops right after them, such a text would be the turn's silent final output. The
exception ends the run instead, and the client gets a retryable `error` event.
"""

from __future__ import annotations

import logging
from typing import Final

from agents import function_tool
from agents.tool_context import ToolContext
from chatkit.types import (
    StructuredInput,
    StructuredInputFreeform,
    StructuredInputMultipleChoice,
    StructuredInputMultipleChoiceOption,
)

from switchboard.demo.state import DemoContext

logger = logging.getLogger(__name__)

LOCAL_TIME_TOOL: Final = "get_user_local_time"
TICKET_TOOL: Final = "ask_ticket_details"

PRIORITY_INPUT: Final = "priority"
DETAILS_INPUT: Final = "details"
PRIORITY_OPTIONS: Final = ("Low", "Normal", "High")
DEFAULT_PRIORITY: Final = "Normal"
SUMMARY_MAX_CHARS: Final = 120


def ticket_questions(summary: str) -> list[StructuredInput]:
    """The ticket form's questions: a single-choice priority and a free-text details question."""
    return [
        StructuredInputMultipleChoice(
            id=PRIORITY_INPUT,
            question="How urgent is it?",
            options=[StructuredInputMultipleChoiceOption(value=value) for value in PRIORITY_OPTIONS],
            multiple=False,
        ),
        StructuredInputFreeform(
            id=DETAILS_INPUT,
            question="Anything else we should know?",
            description=f"Ticket: {summary}" if summary else None,
        ),
    ]


def _one_line(text: str, limit: int) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1].rstrip() + "…"


@function_tool(name_override=LOCAL_TIME_TOOL, failure_error_function=None)
async def get_user_local_time(ctx: ToolContext[DemoContext], include_date: bool) -> str:
    """Ask the user's browser for its current local time and time zone.

    The browser answers after this turn ends: its answer arrives as this call's output, and you
    then tell the user. Call it at most once per request.

    Args:
        include_date: Also ask for the local date.
    """
    context = ctx.context
    if not context.request_client_tool(ctx.tool_call_id, LOCAL_TIME_TOOL, {"include_date": include_date}):
        logger.warning("Ignoring a second client tool call in thread %s", context.thread_id)
        return "The browser was already asked in this turn; wait for its answer."
    return "Asked the user's browser for its local time."


@function_tool(name_override=TICKET_TOOL, failure_error_function=None)
async def ask_ticket_details(ctx: ToolContext[DemoContext], summary: str) -> str:
    """Show the user a form for a new support ticket: how urgent it is and anything else to add.

    Call it once when the user wants to open or file a ticket, and write nothing else: the answers
    arrive as a structured input on the next turn.

    Args:
        summary: What the ticket is about, in a few words taken from the user's message.
    """
    if ctx.context.show_form(ticket_questions(_one_line(summary, SUMMARY_MAX_CHARS))) is None:
        return "The ticket form is already shown to the user; wait for the answers."
    return "The ticket form is shown to the user."
