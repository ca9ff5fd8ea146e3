"""The store interface the conversation relies on.

Every call is scoped by the caller's Principal: a thread belongs to one tenant and one user, and a
thread of anyone else is indistinguishable from a thread that does not exist (NOT_FOUND). Items are
kept as ChatKit JSON, in the order they were first added; adding an item with an id that exists
replaces it in place (ChatKit's `add_thread_item` must tolerate re-adds).

Cursors are item or thread ids, as in openai-chatkit's sample stores: `after` is the id of the last
element of the previous page.

Changes that belong together are written together: `write` applies item upserts, item deletions and
the thread's own state (title, status, metadata such as the active specialist) in one transaction,
so a reader (or the next turn, on any replica) never sees a handoff without the item that announced
it. `delete_thread` and `delete_items_after` are single transactions too.

Run leases (`acquire_lease`, `renew_lease`, `release_lease`) are the database half of the per-thread
run lease (see `store/lease.py`): at most one holder per thread across every process that shares the
database. They are not scoped by owner: whoever asks for one has checked ownership first (or uses
`lease_thread`, which checks it in the same transaction).
A `write` made by a run carries its lease as a `Fence`: the transaction first checks (and on
PostgreSQL locks) the lease row and refuses with `LeaseLost` unless the run still holds it, so a run
that lost its lease can never write into a thread another replica has taken over.

A turn is a handful of short transactions, and each one costs a trip to the database (on SQLite a
hop to the store's database thread, on PostgreSQL a checkout and round trips), so the steps every
turn takes are also offered fused, each in ONE transaction with the same guarantees as the separate
calls: `start_thread` creates a thread with its run lease already taken and its first items written;
`lease_thread` takes an existing thread's lease and reads the thread (ownership first: another
owner's thread is NOT_FOUND, never busy); `write_recent` is a `write` that also returns the history
the model reads next. A lease taken by `start_thread` or `lease_thread` is the same row
`acquire_lease` writes: `renew_lease`, `release_lease` and fenced writes treat it alike.

Limits (`services/limits/`) are checked where a request starts: `admit` for a request that starts
no response, and inside `start_thread` / `lease_thread` for one that does, where the run's slot is
its lease row (counted by tenant and owner), so a refused request leaves nothing behind and a
crashed replica's slots expire with its leases. Usage is added by the writes that store what
produced it (`usage=`), so it commits or rolls back with them; usage of a request that stores
nothing (dictation's model tokens) is added by `record_usage`, in a transaction of its own.

Infrastructure failures (database down, pool exhausted, statement timeout) surface as
`Unavailable` (or `TimedOut`), which the gRPC boundary answers UNAVAILABLE (DEADLINE_EXCEEDED) and
the edge 503 (504).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from chatkit.types import FeedbackKind, Page, ThreadItem, ThreadMetadata

from services.common.auth import Principal
from services.limits import Admission, UsageDelta
from switchboard.app import Busy

Order = Literal["asc", "desc"]


@dataclass(frozen=True, slots=True)
class Fence:
    """A run's lease, checked by the writes it makes: `key` (the thread id) held by `holder`."""

    key: str
    holder: str


@dataclass(frozen=True, slots=True)
class KnownTitle:
    """The thread title a writer last read (see `Store.write`): when the stored title is no longer
    this one, someone renamed the thread meanwhile and the stored title wins."""

    title: str | None


class ThreadBusy(Busy):
    """Another run holds the thread's lease (ABORTED: HTTP 409 at the edge).

    `retry_after_s` is a hint for the caller (the run lease's TTL when known: a running turn renews
    it, a crashed one blocks the thread at most that long); gRPC servers send it as the trailing
    metadata `retry-after` and the edge as the `Retry-After` header (see `abort_with`)."""

    def __init__(self, thread_id: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(
            f"thread {thread_id!r} is busy: another response is being generated; retry when it ends",
        )
        self.retry_after_s = retry_after_s


class LeaseLost(Busy):
    """The run's lease expired or was taken over; the run is stopped and writes nothing more."""

    def __init__(self, thread_id: str) -> None:
        super().__init__(
            f"the response in thread {thread_id!r} was interrupted (its run lease was lost); try again",
        )


class Store(ABC):
    @abstractmethod
    async def open(self) -> None:
        """Get ready to serve. Raises `SchemaError` when the database schema is not the one this code
        needs and the store may not migrate it by itself (see `store/migrate.py`)."""

    @abstractmethod
    async def close(self) -> None: ...

    # Threads
    @abstractmethod
    async def create_thread(self, owner: Principal, thread: ThreadMetadata) -> None: ...

    @abstractmethod
    async def start_thread(
        self,
        owner: Principal,
        thread: ThreadMetadata,
        *,
        holder: str,
        ttl_s: float,
        items: Sequence[ThreadItem] = (),
        admission: Admission | None = None,
    ) -> None:
        """In ONE transaction: `admit(owner, admission)` when given (the limits; the run slot is the
        lease, counted once it is taken), `create_thread`, `acquire_lease(thread.id, holder, ttl_s)` and
        `write(owner, thread.id, items=items)` (a new thread's first turn: one transaction instead of
        three). All or nothing: when the lease is held by another holder (possible only for a thread
        id someone leased without creating it) this raises `ThreadBusy` and nothing is written; an
        existing thread id is ALREADY_EXISTS, an item id of another thread INVALID_ARGUMENT. The
        lease is an ordinary one (renewed, released and checked by fenced writes as usual)."""

    @abstractmethod
    async def lease_thread(
        self,
        owner: Principal,
        thread_id: str,
        *,
        holder: str,
        ttl_s: float,
        admission: Admission | None = None,
    ) -> ThreadMetadata:
        """In ONE transaction: `admit(owner, admission)` when given, take the lease on `thread_id`
        for `holder` (as `acquire_lease`) and read
        the owner's thread, as it is once the lease is held (what the previous run wrote before it
        released the lease is visible). One transaction instead of the three of an ownership check,
        `acquire_lease` and a read under the lease.

        Ownership first: a thread that is not the owner's is NotFound, whether or not
        someone holds its lease, and no lease is taken. `ThreadBusy` when it is the owner's and another
        holder has an unexpired lease (nothing changes; callers may poll). An expired lease of another
        holder is taken over. A limit that refuses (`LimitReached`) changes nothing either."""

    @abstractmethod
    async def load_thread(self, owner: Principal, thread_id: str) -> ThreadMetadata:
        """The thread, or NotFound when it is not the owner's."""

    @abstractmethod
    async def rename_thread(self, owner: Principal, thread_id: str, title: str) -> ThreadMetadata:
        """Set the thread's title and nothing else, in ONE transaction that reads the stored thread
        under a row lock: its status and metadata (the active specialist a running turn just saved)
        are kept as stored, never rewritten from an older copy. Returns the thread as stored now.
        NotFound when it is not the owner's."""

    async def save_thread(self, owner: Principal, thread: ThreadMetadata) -> None:
        """Update an existing thread's title, status and metadata."""
        await self.write(owner, thread.id, thread=thread)

    @abstractmethod
    async def list_threads(
        self, owner: Principal, *, limit: int, after: str | None, order: Order
    ) -> Page[ThreadMetadata]: ...

    @abstractmethod
    async def delete_thread(self, owner: Principal, thread_id: str) -> None:
        """Delete the thread and all its items at once."""

    # Items
    async def add_item(self, owner: Principal, thread_id: str, item: ThreadItem) -> None:
        """Append the item, or replace it in place when its id exists in this thread.

        An id that exists in another thread is INVALID_ARGUMENT: item ids never move."""
        await self.write(owner, thread_id, items=[item])

    @abstractmethod
    async def write(
        self,
        owner: Principal,
        thread_id: str,
        *,
        items: Sequence[ThreadItem] = (),
        deleted: Sequence[str] = (),
        thread: ThreadMetadata | None = None,
        fence: Fence | None = None,
        known_title: KnownTitle | None = None,
        usage: UsageDelta | None = None,
    ) -> None:
        """In ONE transaction: upsert `items` (in order, as `add_item`), delete the `deleted` item ids
        (unknown ids are ignored), and save `thread`'s title, status and metadata when given.
        With `known_title` (the title the writer last read), the title is compared and set: the
        stored title is kept when it differs from `known_title` (a rename landed while a turn ran,
        and it wins over the turn's own title), else `thread.title` is written.
        All or nothing: any failure leaves the thread as it was. With a `fence`, nothing is written
        unless `fence.holder` still holds the lease on `fence.key` (else `LeaseLost`). `usage` is added
        to the owner's accounting in the same transaction (what produced it is stored with it)."""

    @abstractmethod
    async def load_item(self, owner: Principal, thread_id: str, item_id: str) -> ThreadItem: ...

    @abstractmethod
    async def write_recent(
        self,
        owner: Principal,
        thread_id: str,
        *,
        limit: int,
        items: Sequence[ThreadItem] = (),
        deleted: Sequence[str] = (),
        thread: ThreadMetadata | None = None,
        fence: Fence | None = None,
        usage: UsageDelta | None = None,
    ) -> list[ThreadItem]:
        """`write(...)` and then `recent_items(owner, thread_id, limit)`, in ONE transaction: a turn
        stores the user message and reads the model's history in one trip instead of two. The
        history is read after the changes, so it ends with them; nothing is read when the write fails
        (same errors as `write`, and nothing is written)."""

    @abstractmethod
    async def list_items(
        self, owner: Principal, thread_id: str, *, limit: int, after: str | None, order: Order
    ) -> Page[ThreadItem]: ...

    @abstractmethod
    async def recent_items(self, owner: Principal, thread_id: str, limit: int) -> list[ThreadItem]:
        """The newest `limit` items, oldest first: the model's bounded view of the conversation."""

    async def delete_item(self, owner: Principal, thread_id: str, item_id: str) -> None:
        await self.write(owner, thread_id, deleted=[item_id])

    @abstractmethod
    async def delete_items_after(self, owner: Principal, thread_id: str, item_id: str) -> int:
        """Delete every item added after `item_id`, in one transaction; return how many."""

    @abstractmethod
    async def add_feedback(
        self, owner: Principal, thread_id: str, item_ids: list[str], kind: FeedbackKind
    ) -> None:
        """Record the owner's feedback on items of the thread (the latest kind per item wins)."""

    # Limits
    @abstractmethod
    async def admit(self, owner: Principal, admission: Admission) -> None:
        """Check (and take) what a request that starts no response costs: one request of the owner's
        rate, and `admission.record` counted, in ONE transaction; `LimitReached` changes nothing.
        With `admission.budget` (a request that spends model tokens, such as dictation through the
        provider) a tenant whose `tokens_per_day` is used up is refused too."""

    @abstractmethod
    async def record_usage(self, owner: Principal, usage: UsageDelta) -> None:
        """Add `usage` to the owner's accounting of the day (model tokens to the tenant's tokens of
        the day too, which the budget reads), in ONE transaction of its own: for usage produced by
        a request that stores nothing else (dictation). An empty `usage` writes nothing."""

    # Run leases
    @abstractmethod
    async def acquire_lease(self, key: str, holder: str, ttl_s: float) -> bool:
        """Take the lease on `key` for `holder` until now + `ttl_s` (database clock) unless another
        holder has an unexpired one; True when `holder` has it now. Atomic across processes."""

    @abstractmethod
    async def renew_lease(self, key: str, holder: str, ttl_s: float) -> bool:
        """Push the expiry to now + `ttl_s` if `holder` still holds the lease; False when it lost it
        (it expired and someone else took it, or it was released)."""

    @abstractmethod
    async def release_lease(self, key: str, holder: str) -> None:
        """Give the lease up if `holder` still holds it (a no-op otherwise)."""


class SchemaError(RuntimeError):
    """The database schema is not the one this code needs; the message says what to run."""
