"""threads.create binds attachments only once the thread exists: a failed create leaves them usable."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from chatkit.types import Attachment, InferenceOptions, UserMessageInput, UserMessageTextContent

from services.agent_service.conversation import Conversation
from services.agent_service.store import SqliteStore
from services.common.auth import Principal
from switchboard.app import InvalidRequest, Unavailable

ALICE = Principal(tenant="acme", user="alice", role="user")


class FakeAttachments:
    """Records binds; fails them when asked."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.bound: list[tuple[str, list[str]]] = []

    async def attach(self, thread_id: str, attachment_ids: Sequence[str]) -> list[Attachment]:
        if self.fail:
            raise InvalidRequest("attachment atc_1 is not usable")
        self.bound.append((thread_id, list(attachment_ids)))
        return []


class BrokenStartStore(SqliteStore):
    async def start_thread(self, *args: Any, **kwargs: Any) -> None:
        raise Unavailable("the database is unavailable; try again later")


def _message() -> UserMessageInput:
    return UserMessageInput(
        content=[UserMessageTextContent(text="see the file")],
        attachments=["atc_1"],
        inference_options=InferenceOptions(),
    )


async def _drain(events: AsyncIterator[Any]) -> None:
    async for _ in events:
        pass


@pytest.mark.parametrize("store_class", [SqliteStore, BrokenStartStore])
async def test_a_failed_create_leaves_its_attachments_unbound(tmp_path: Path, store_class: type) -> None:
    store = store_class(tmp_path / "store.sqlite3")
    await store.open()
    attachments = FakeAttachments(fail=store_class is SqliteStore)
    conversation = Conversation(store, object(), history_items=10, attachments=attachments)  # type: ignore[arg-type]
    try:
        with pytest.raises((InvalidRequest, Unavailable)):
            await _drain(conversation.create_thread(ALICE, "en", _message()))
        # Nothing bound (the thread never existed), and no half-created thread is left behind.
        assert attachments.bound == []
        page = await store.list_threads(ALICE, limit=10, after=None, order="desc")
        assert page.data == []
    finally:
        await store.close()
