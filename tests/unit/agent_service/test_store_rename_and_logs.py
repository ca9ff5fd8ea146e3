"""threads.update changes the title alone, on both backends: it keeps the status and metadata a running
turn saved, and the turn's later writes keep the new title. And a failing statement's log never
quotes what users wrote (`hide_parameters=True` on the engines)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from chatkit.types import ThreadMetadata

from services.agent_service.store import KnownTitle, SqlStore
from services.common.auth import Principal
from services.common.ids import new_id
from switchboard.app import AlreadyExists, NotFound
from tests.unit.agent_service.store_support import BACKENDS, opened_store

ALICE = Principal(tenant="acme", user="alice", role="user")
EVE = Principal(tenant="evil", user="alice", role="user")


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SqlStore]:
    async with opened_store(request.param, tmp_path, "rename") as opened:
        yield opened


async def _started(store: SqlStore) -> ThreadMetadata:
    thread = ThreadMetadata(id=new_id("thr"), created_at=datetime.now(UTC), title="Old")
    await store.start_thread(ALICE, thread, holder="run-1", ttl_s=30)
    return thread


async def test_a_rename_keeps_what_a_running_turn_saved(store: SqlStore) -> None:
    thread = await _started(store)
    turn_copy = thread.model_copy(deep=True)  # what the turn read when it started
    turn_copy.metadata["active_agent"] = "billing"  # a handoff, saved by the turn
    await store.write(ALICE, thread.id, thread=turn_copy, known_title=KnownTitle("Old"))

    renamed = await store.rename_thread(ALICE, thread.id, "Renamed")

    assert renamed.title == "Renamed"
    stored = await store.load_thread(ALICE, thread.id)
    assert stored.title == "Renamed"
    assert stored.metadata["active_agent"] == "billing"
    assert stored.status == thread.status


async def test_a_running_turns_later_writes_keep_the_new_title(store: SqlStore) -> None:
    thread = await _started(store)
    turn_copy = thread.model_copy(deep=True)
    await store.rename_thread(ALICE, thread.id, "Renamed mid-turn")
    # The turn hands off and names the thread itself, from the copy it read before the rename.
    turn_copy.metadata["active_agent"] = "shipping"
    turn_copy.title = "Named by the agent"
    await store.write(ALICE, thread.id, thread=turn_copy, known_title=KnownTitle("Old"))
    stored = await store.load_thread(ALICE, thread.id)
    assert stored.title == "Renamed mid-turn"  # the user's rename wins
    assert stored.metadata["active_agent"] == "shipping"
    # Without a rename in between, the turn's own title is written.
    turn_copy.title = "Named again"
    await store.write(ALICE, thread.id, thread=turn_copy, known_title=KnownTitle("Renamed mid-turn"))
    assert (await store.load_thread(ALICE, thread.id)).title == "Named again"


async def test_renaming_someone_elses_thread_is_not_found(store: SqlStore) -> None:
    thread = await _started(store)
    with pytest.raises(NotFound):
        await store.rename_thread(EVE, thread.id, "Mine now")
    assert (await store.load_thread(ALICE, thread.id)).title == "Old"


async def test_a_failing_statement_is_logged_without_its_parameters(
    store: SqlStore, caplog: pytest.LogCaptureFixture
) -> None:
    thread = await _started(store)
    secret = "my card number is 4111 1111 1111 1111"
    clash = ThreadMetadata(id=thread.id, created_at=datetime.now(UTC), title=secret)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(AlreadyExists):
        await store.start_thread(ALICE, clash, holder="run-2", ttl_s=30)
    assert "database operation failed" in caplog.text
    assert "4111" not in caplog.text
