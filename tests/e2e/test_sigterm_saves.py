"""SIGTERM during a stream that outlasts the grace: the turn is cancelled and its partial answer is
saved (with the cancel note and the lease released) before the agent service closes its store."""

from __future__ import annotations

import json
import signal
import sqlite3
from pathlib import Path

import aiohttp

from tests.support.chatkit_wire import EVENT, request, user_input
from tests.support.processes import running_stack

QUESTION = "Please explain in detail how I can reset my password after a login error"


def _rows(store: Path, sql: str, *args: object) -> list[tuple[object, ...]]:
    with sqlite3.connect(store) as db:
        return list(db.execute(sql, args).fetchall())


async def test_sigterm_during_a_stream_keeps_the_partial_answer(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    with running_stack(
        tmp_path / "term",
        SWITCHBOARD_LOCAL_TOKEN_DELAY_MS="150",
        SWITCHBOARD_SHUTDOWN_GRACE_S="1",
    ) as stack:
        agent = stack.services["agent"]
        body = request("threads.create", input=user_input(QUESTION))
        async with http.post(f"{stack.edge_url}/chatkit/api", json=body, headers=stack.headers()) as response:
            assert response.status == 200
            raw = b""
            async for chunk in response.content.iter_any():
                raw += chunk
                if raw.count(b"text_delta") >= 2 and agent.process.poll() is None:
                    agent.process.send_signal(signal.SIGTERM)
                    break
            raw += await response.read()
        events = [EVENT.validate_json(f[6:]) for f in raw.split(b"\n\n") if f.startswith(b"data: ")]
        thread_id = next(event.thread.id for event in events if event.type == "thread.created")  # type: ignore[union-attr]
        assert events[-1].type == "error", "the grace (1 s) is shorter than the answer"
        assert agent.process.wait(timeout=20) == 0
        log = agent.log_text()
        assert "could not save the cancelled turn" not in log
        assert "did not finish before the store closed" not in log

        items = [
            json.loads(str(row[0]))
            for row in _rows(
                stack.store_path,
                "SELECT items.data FROM items JOIN threads ON threads.seq = items.thread_seq "
                "WHERE threads.id = ? ORDER BY items.seq",
                thread_id,
            )
        ]
        kinds = [item["type"] for item in items]
        assert kinds[0] == "user_message"
        assert "assistant_message" in kinds, kinds
        partial = next(item for item in items if item["type"] == "assistant_message")
        assert "".join(part["text"] for part in partial["content"]).strip()
        assert kinds[-1] == "sdk_hidden_context"
        assert _rows(stack.store_path, "SELECT * FROM run_leases WHERE thread_id = ?", thread_id) == []
