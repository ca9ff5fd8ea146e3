"""Switchboard's own offline models (`services/agent_service/models/offline.py`): the title model, and
the plain model an app without an offline model of its own runs on."""

from __future__ import annotations

from typing import Any

from agents import Model, ModelSettings, ModelTracing

from services.agent_service.models.factory import ConfiguredModels, title_models
from services.agent_service.models.offline import NO_PROVIDER, OfflineModel, OfflineTitleModel


def _user(text: str) -> dict[str, Any]:
    return {"role": "user", "type": "message", "content": [{"type": "input_text", "text": text}]}


async def _text(model: Model, items: list[Any]) -> str:
    response = await model.get_response(
        "instructions",
        items,  # type: ignore[arg-type]
        ModelSettings(),
        [],
        None,
        [],
        ModelTracing.DISABLED,
        previous_response_id=None,
        conversation_id=None,
        prompt=None,
    )
    return str(response.output[0].content[0].text)  # type: ignore[union-attr]


async def test_title_model_takes_the_first_words_of_the_first_user_message() -> None:
    items = [_user("can you help me with my invoice from March, please?"), _user("second")]
    assert await _text(OfflineTitleModel(), items) == "Can you help me with my"
    assert await _text(OfflineTitleModel(), [_user("refund?!")]) == "Refund"


async def test_the_plain_offline_model_says_so_and_quotes_the_newest_message() -> None:
    text = await _text(OfflineModel(), [_user("first"), _user("What is my order status?")])
    assert text == f'{NO_PROVIDER} You said: "What is my order status?"'
    assert await _text(OfflineModel(), []) == NO_PROVIDER


def test_offline_every_name_resolves_to_the_offline_model_and_titles_get_their_own() -> None:
    local = ConfiguredModels("local")
    assert local.is_local and isinstance(local.get_model(None), OfflineModel)
    assert local.get_model("gpt-4.1") is local.get_model(None)
    titles = title_models(local)
    assert titles.is_local and isinstance(titles.get_model(None), OfflineTitleModel)
