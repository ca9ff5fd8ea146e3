"""A help desk on Switchboard: a triage agent hands questions to an FAQ specialist, which answers
from the caller's own tenant's articles and shows the best one as a card the user can rate.

Start it with `SWITCHBOARD_APP=helpdesk_app:app` (README, "Your own agents"). It imports nothing
from Switchboard but `switchboard.app`, the public app API.

- one tool (`search_articles`) reads tenant-scoped data: the tenant comes from the verified caller;
- one widget (the article card) with an action (`helpdesk.rate`, a streaming handler);
- one handoff (triage → FAQ specialist).

Without an LLM provider it runs on `HelpdeskOfflineModel`, a scripted model that routes, calls the
tool and answers with what it found, so the whole path works offline (in CI too).
"""

from __future__ import annotations

from typing import Any

from agents import Agent, Handoff, RunContextWrapper, Tool, function_tool
from agents.items import TResponseInputItem
from chatkit.actions import ActionConfig
from chatkit.widgets import WidgetRoot, WidgetTemplate
from pydantic import BaseModel, ConfigDict, Field

from helpdesk_app.articles import Article, Articles
from switchboard.app import (
    App,
    AppEnvironment,
    ChatContext,
    NotFound,
    StreamingActionContext,
    show_errors_to_user,
)
from switchboard.app.offline import Call, Reply, Say, ScriptedModel, as_mapping, user_texts

Context = ChatContext[Articles]
RATE_ACTION = "helpdesk.rate"

ARTICLE_CARD = WidgetTemplate(
    {
        "version": "1.0",
        "name": "article_card",
        "template": """{
  "type": "Card",
  "size": "md",
  "children": [
    {"type": "Title", "value": {{ title | tojson }}, "size": "sm"},
    {"type": "Text", "value": {{ body | tojson }}},
    {"type": "Row", "gap": 2, "children": [
      {"type": "Button", "label": "Helpful", "style": "primary", "onClickAction": {{ helpful | tojson }}},
      {"type": "Button", "label": "Not helpful", "variant": "outline",
       "onClickAction": {{ unhelpful | tojson }}}
    ]}
  ]
}""",
        "jsonSchema": {"type": "object", "required": ["title", "body", "helpful", "unhelpful"]},
    }
)


class Rating(BaseModel):
    """The card buttons' payload."""

    model_config = ConfigDict(extra="forbid")
    article_id: str = Field(min_length=1, max_length=32)
    helpful: bool


def article_card(article: Article) -> WidgetRoot:
    def rate(helpful: bool) -> dict[str, Any]:
        payload = Rating(article_id=article.id, helpful=helpful).model_dump()
        return ActionConfig(type=RATE_ACTION, payload=payload, handler="server").model_dump()

    return ARTICLE_CARD.build(
        {"title": article.title, "body": article.body, "helpful": rate(True), "unhelpful": rate(False)}
    )


@function_tool(failure_error_function=show_errors_to_user)
async def search_articles(ctx: RunContextWrapper[Context], query: str) -> str:
    """Search the help desk articles of the user's organisation.

    Args:
        query: What the user asks about, in their words.
    """
    chat = ctx.context
    chat.progress("Searching the help desk articles…", icon="search")
    found = chat.state.search(chat.caller.tenant, query)
    if not found:
        return "No article matches."
    chat.show_widget(article_card(found[0]), copy_text=f"{found[0].title}: {found[0].body}")
    return " ".join(f"[{article.id}] {article.title}: {article.body}" for article in found[:3])


faq_specialist = Agent[Context](
    name="FAQ specialist",
    handoff_description="Answers how-to questions from the organisation's help desk articles.",
    instructions=(
        "Answer from the help desk articles only: call search_articles with the user's question, "
        "then answer in one or two sentences and name the article id."
    ),
    tools=[search_articles],
)
triage = Agent[Context](
    name="Help desk",
    instructions="Transfer every question to the FAQ specialist.",
    handoffs=[faq_specialist],
)


class HelpdeskOfflineModel(ScriptedModel):
    """Offline stand-in for a language model: route, search, answer with what the search found."""

    def reply(
        self,
        instructions: str | None,
        input: str | list[TResponseInputItem],
        tools: list[Tool],
        handoffs: list[Handoff],
    ) -> Reply:
        if handoffs and not tools:
            return Call(handoffs[0].tool_name, {})
        items = [as_mapping(item) for item in input] if isinstance(input, list) else []
        newest_user = max((i for i, item in enumerate(items) if item.get("role") == "user"), default=-1)
        offered = {tool.name for tool in tools}
        calls = {
            item.get("call_id"): item.get("name") for item in items if item.get("type") == "function_call"
        }
        outputs = [
            item
            for item in items[newest_user + 1 :]
            if item.get("type") == "function_call_output" and calls.get(item.get("call_id")) in offered
        ]
        if outputs:
            return Say(f"From the help desk: {outputs[-1].get('output')}")
        texts = user_texts(input)
        if tools:
            return Call(tools[0].name, {"query": texts[-1] if texts else ""})
        return Say("Ask me a how-to question.")


async def open_articles(environment: AppEnvironment) -> Articles:
    return Articles.load()


app = App[Articles](
    name="helpdesk",
    agent=triage,
    startup=open_articles,
    offline_model=lambda environment: HelpdeskOfflineModel(environment.offline_token_delay_s),
)


@app.action(RATE_ACTION, payload=Rating)
async def rate(ctx: StreamingActionContext[Articles], rating: Rating) -> None:
    """Thank the user for rating an article of their own organisation."""
    article = ctx.state.get(ctx.caller.tenant, rating.article_id)
    if article is None:
        raise NotFound(f"no article {rating.article_id} in your organisation")
    ctx.progress("Recording your rating…")
    verdict = "helpful" if rating.helpful else "not helpful"
    ctx.reply("Thanks! ", f'Noted that "{article.title}" ({article.id}) was {verdict}.')
