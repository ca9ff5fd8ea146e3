"""The embedded SQLite store (aiosqlite: the sqlite3 calls run on a worker thread, not the loop).

Layout: `threads` and `items` each get an INTEGER `seq` (SQLite's rowid) that fixes insertion order,
so paging is an index range scan on (owner, seq) or (thread, seq) and never sorts by timestamp
strings. Items keep ChatKit's JSON in `data`, so what comes out is exactly what went in. WAL mode lets
readers run while a turn writes.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import aiosqlite
from chatkit.types import FeedbackKind, Page, ThreadItem, ThreadMetadata
from pydantic import TypeAdapter

from services.agent_service.store.base import Order, Store
from services.common.auth import Principal
from services.common.errors import invalid, not_found

_ITEM: Final = TypeAdapter[ThreadItem](ThreadItem)

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS threads (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    id         TEXT NOT NULL UNIQUE,
    tenant     TEXT NOT NULL,
    owner      TEXT NOT NULL,
    created_at TEXT NOT NULL,
    data       TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS threads_by_owner ON threads (tenant, owner, seq);
CREATE TABLE IF NOT EXISTS items (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    id         TEXT NOT NULL UNIQUE,
    thread_seq INTEGER NOT NULL REFERENCES threads (seq) ON DELETE CASCADE,
    type       TEXT NOT NULL,
    data       TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS items_by_thread ON items (thread_seq, seq);
CREATE TABLE IF NOT EXISTS feedback (
    item_seq   INTEGER NOT NULL REFERENCES items (seq) ON DELETE CASCADE,
    kind       TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (item_seq)
);
"""


def _dump_thread(thread: ThreadMetadata) -> str:
    return thread.model_dump_json(exclude_none=True)


def _dump_item(item: ThreadItem) -> str:
    return item.model_dump_json(exclude_none=True)


class SqliteStore(Store):
    def __init__(self, path: Path) -> None:
        self._path = path
        self._db: aiosqlite.Connection | None = None

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("the store is not open")
        return self._db

    async def open(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._db = await aiosqlite.connect(self._path)
        await self._db.execute("PRAGMA journal_mode=WAL")
        await self._db.execute("PRAGMA synchronous=NORMAL")
        await self._db.execute("PRAGMA foreign_keys=ON")
        await self._db.executescript(_SCHEMA)
        await self._db.commit()

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    # ------------------------------------------------------------------ threads

    async def _thread_seq(self, owner: Principal, thread_id: str) -> int:
        async with self.db.execute(
            "SELECT seq FROM threads WHERE id = ? AND tenant = ? AND owner = ?",
            (thread_id, owner.tenant, owner.user),
        ) as cursor:
            row = await cursor.fetchone()
        if row is None:
            raise not_found(f"thread {thread_id!r}")
        return int(row[0])

    async def create_thread(self, owner: Principal, thread: ThreadMetadata) -> None:
        await self.db.execute(
            "INSERT INTO threads (id, tenant, owner, created_at, data) VALUES (?, ?, ?, ?, ?)",
            (thread.id, owner.tenant, owner.user, thread.created_at.isoformat(), _dump_thread(thread)),
        )
        await self.db.commit()

    async def load_thread(self, owner: Principal, thread_id: str) -> ThreadMetadata:
        async with self.db.execute(
            "SELECT data FROM threads WHERE id = ? AND tenant = ? AND owner = ?",
            (thread_id, owner.tenant, owner.user),
        ) as cursor:
            row = await cursor.fetchone()
        if row is None:
            raise not_found(f"thread {thread_id!r}")
        return ThreadMetadata.model_validate_json(row[0])

    async def save_thread(self, owner: Principal, thread: ThreadMetadata) -> None:
        cursor = await self.db.execute(
            "UPDATE threads SET data = ? WHERE id = ? AND tenant = ? AND owner = ?",
            (_dump_thread(thread), thread.id, owner.tenant, owner.user),
        )
        await self.db.commit()
        if cursor.rowcount == 0:
            raise not_found(f"thread {thread.id!r}")

    async def list_threads(
        self, owner: Principal, *, limit: int, after: str | None, order: Order
    ) -> Page[ThreadMetadata]:
        where = "tenant = ? AND owner = ?"
        params: list[object] = [owner.tenant, owner.user]
        if after is not None:
            cursor_seq = await self._thread_seq(owner, after)
            where += " AND seq > ?" if order == "asc" else " AND seq < ?"
            params.append(cursor_seq)
        direction = "ASC" if order == "asc" else "DESC"
        async with self.db.execute(
            f"SELECT id, data FROM threads WHERE {where} ORDER BY seq {direction} LIMIT ?",
            (*params, limit + 1),
        ) as cursor:
            rows = list(await cursor.fetchall())
        threads = [ThreadMetadata.model_validate_json(row[1]) for row in rows[:limit]]
        has_more = len(rows) > limit
        return Page(data=threads, has_more=has_more, after=threads[-1].id if threads else None)

    async def delete_thread(self, owner: Principal, thread_id: str) -> None:
        cursor = await self.db.execute(
            "DELETE FROM threads WHERE id = ? AND tenant = ? AND owner = ?",
            (thread_id, owner.tenant, owner.user),
        )
        await self.db.commit()
        if cursor.rowcount == 0:
            raise not_found(f"thread {thread_id!r}")

    # ------------------------------------------------------------------ items

    async def add_item(self, owner: Principal, thread_id: str, item: ThreadItem) -> None:
        thread_seq = await self._thread_seq(owner, thread_id)
        # Upsert in place, but never across threads: an id that exists elsewhere is refused.
        cursor = await self.db.execute(
            "INSERT INTO items (id, thread_seq, type, data) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET data = excluded.data, type = excluded.type "
            "WHERE items.thread_seq = excluded.thread_seq",
            (item.id, thread_seq, item.type, _dump_item(item)),
        )
        await self.db.commit()
        if cursor.rowcount == 0:
            raise invalid(f"item id {item.id!r} belongs to another thread")

    async def _item_seq(self, thread_seq: int, item_id: str) -> int:
        async with self.db.execute(
            "SELECT seq FROM items WHERE id = ? AND thread_seq = ?", (item_id, thread_seq)
        ) as cursor:
            row = await cursor.fetchone()
        if row is None:
            raise not_found(f"item {item_id!r}")
        return int(row[0])

    async def load_item(self, owner: Principal, thread_id: str, item_id: str) -> ThreadItem:
        thread_seq = await self._thread_seq(owner, thread_id)
        async with self.db.execute(
            "SELECT data FROM items WHERE id = ? AND thread_seq = ?", (item_id, thread_seq)
        ) as cursor:
            row = await cursor.fetchone()
        if row is None:
            raise not_found(f"item {item_id!r}")
        return _ITEM.validate_json(row[0])

    async def list_items(
        self, owner: Principal, thread_id: str, *, limit: int, after: str | None, order: Order
    ) -> Page[ThreadItem]:
        thread_seq = await self._thread_seq(owner, thread_id)
        where = "thread_seq = ?"
        params: list[object] = [thread_seq]
        if after is not None:
            where += " AND seq > ?" if order == "asc" else " AND seq < ?"
            params.append(await self._item_seq(thread_seq, after))
        direction = "ASC" if order == "asc" else "DESC"
        async with self.db.execute(
            f"SELECT data FROM items WHERE {where} ORDER BY seq {direction} LIMIT ?",
            (*params, limit + 1),
        ) as cursor:
            rows = list(await cursor.fetchall())
        items = [_ITEM.validate_json(row[0]) for row in rows[:limit]]
        return Page(data=items, has_more=len(rows) > limit, after=items[-1].id if items else None)

    async def recent_items(self, owner: Principal, thread_id: str, limit: int) -> list[ThreadItem]:
        page = await self.list_items(owner, thread_id, limit=limit, after=None, order="desc")
        return page.data[::-1]

    async def delete_item(self, owner: Principal, thread_id: str, item_id: str) -> None:
        thread_seq = await self._thread_seq(owner, thread_id)
        await self.db.execute("DELETE FROM items WHERE id = ? AND thread_seq = ?", (item_id, thread_seq))
        await self.db.commit()

    async def delete_items_after(self, owner: Principal, thread_id: str, item_id: str) -> int:
        thread_seq = await self._thread_seq(owner, thread_id)
        item_seq = await self._item_seq(thread_seq, item_id)
        cursor = await self.db.execute(
            "DELETE FROM items WHERE thread_seq = ? AND seq > ?", (thread_seq, item_seq)
        )
        await self.db.commit()
        return int(cursor.rowcount)

    async def add_feedback(
        self, owner: Principal, thread_id: str, item_ids: list[str], kind: FeedbackKind
    ) -> None:
        thread_seq = await self._thread_seq(owner, thread_id)
        seqs = [await self._item_seq(thread_seq, item_id) for item_id in item_ids]
        now = datetime.now(UTC).isoformat()
        await self.db.executemany(
            "INSERT INTO feedback (item_seq, kind, created_at) VALUES (?, ?, ?) "
            "ON CONFLICT (item_seq) DO UPDATE SET kind = excluded.kind, created_at = excluded.created_at",
            [(seq, kind, now) for seq in seqs],
        )
        await self.db.commit()

    async def feedback_for(self, owner: Principal, thread_id: str) -> dict[str, str]:
        """Item id -> feedback kind for a thread (for operators and tests)."""
        thread_seq = await self._thread_seq(owner, thread_id)
        async with self.db.execute(
            "SELECT items.id, feedback.kind FROM feedback JOIN items ON items.seq = feedback.item_seq "
            "WHERE items.thread_seq = ?",
            (thread_seq,),
        ) as cursor:
            rows: list[Any] = list(await cursor.fetchall())
        return {str(row[0]): str(row[1]) for row in rows}
