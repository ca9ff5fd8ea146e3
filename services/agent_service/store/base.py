"""The store interface the conversation relies on.

Every call is scoped by the caller's Principal: a thread belongs to one tenant and one user, and a
thread of anyone else is indistinguishable from a thread that does not exist (NOT_FOUND). Items are
kept as ChatKit JSON, in the order they were first added; adding an item with an id that exists
replaces it in place (ChatKit's `add_thread_item` must tolerate re-adds).

Cursors are item or thread ids, as in openai-chatkit's sample stores: `after` is the id of the last
element of the previous page.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Literal

from chatkit.types import FeedbackKind, Page, ThreadItem, ThreadMetadata

from services.common.auth import Principal

Order = Literal["asc", "desc"]


class Store(ABC):
    @abstractmethod
    async def open(self) -> None:
        """Create the schema if needed and get ready to serve."""

    @abstractmethod
    async def close(self) -> None: ...

    # Threads
    @abstractmethod
    async def create_thread(self, owner: Principal, thread: ThreadMetadata) -> None: ...

    @abstractmethod
    async def load_thread(self, owner: Principal, thread_id: str) -> ThreadMetadata:
        """The thread, or ServiceError(NOT_FOUND) when it is not the owner's."""

    @abstractmethod
    async def save_thread(self, owner: Principal, thread: ThreadMetadata) -> None:
        """Update an existing thread's title, status and metadata."""

    @abstractmethod
    async def list_threads(
        self, owner: Principal, *, limit: int, after: str | None, order: Order
    ) -> Page[ThreadMetadata]: ...

    @abstractmethod
    async def delete_thread(self, owner: Principal, thread_id: str) -> None:
        """Delete the thread and all its items at once."""

    # Items
    @abstractmethod
    async def add_item(self, owner: Principal, thread_id: str, item: ThreadItem) -> None:
        """Append the item, or replace it in place when its id exists in this thread."""

    @abstractmethod
    async def load_item(self, owner: Principal, thread_id: str, item_id: str) -> ThreadItem: ...

    @abstractmethod
    async def list_items(
        self, owner: Principal, thread_id: str, *, limit: int, after: str | None, order: Order
    ) -> Page[ThreadItem]: ...

    @abstractmethod
    async def recent_items(self, owner: Principal, thread_id: str, limit: int) -> list[ThreadItem]:
        """The newest `limit` items, oldest first: the model's bounded view of the conversation."""

    @abstractmethod
    async def delete_item(self, owner: Principal, thread_id: str, item_id: str) -> None: ...

    @abstractmethod
    async def delete_items_after(self, owner: Principal, thread_id: str, item_id: str) -> int:
        """Delete every item added after `item_id`, in one transaction; return how many."""

    @abstractmethod
    async def add_feedback(
        self, owner: Principal, thread_id: str, item_ids: list[str], kind: FeedbackKind
    ) -> None:
        """Record the owner's feedback on items of the thread (the latest kind per item wins)."""
