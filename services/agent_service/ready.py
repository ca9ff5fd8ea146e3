"""What an async generator has ready, taken without waiting: how `ChatService.Stream` batches events.

`Ready(source)` iterates `source` as `async for` does (`await anext(ready)` waits when `source`
waits) and adds `ready.poll()`: the next item if `source` produces it without suspending, else
`NOT_READY` at once. "Without suspending" is the whole rule: the item was computed already, or can
be computed by plain Python (no I/O, no lock, no timer, no other task). It is the idea of the
responder's outbox (agents/responder.py: its consumer takes everything queued since it last came
back, and text deltas that queued up back to back leave as one), one level up: the items a turn
produces back to back between two waits are "ready together". Nothing ever waits to collect more.

How: `poll` runs the first step of `source.__anext__()` by hand, as a task does (`send(None)`). A
step that finishes returned an item. A step that suspends yielded what it waits on (a future, or
`None` for `asyncio.sleep(0)`), and that half-run step is kept: the next `anext(ready)` hands what it
waits on to the task and finishes the step (`_resume`, a `yield from` that starts after the first
yield). So `source` runs exactly as if it had been awaited from the start, in the caller's task:
`asyncio.current_task()` and contextvars are the caller's, and a cancellation reaches `source` where
it waits.

Between a `poll` that left a step half-run and the next `anext`, the caller does other awaits (it
writes the batch). A step cannot be left like that: `cancel_pending()` cancels it where it waits, as
`Task.cancel()` would have if the task had been awaiting it (cancel that future, throw
CancelledError), and runs it to its end; `aclose()` does that, then closes `source`.

Order is preserved: the end of `source` or an error that `poll` meets is kept and raised by the next
`anext`, after the caller took the items before it. Only async generators are polled (other async
iterators are only awaited: `poll` says NOT_READY without touching them).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import types
from collections.abc import AsyncGenerator, AsyncIterator, Coroutine, Generator
from typing import Any, Final, Generic, TypeVar

_T = TypeVar("_T")
_R = TypeVar("_R")


class NotReady(enum.Enum):
    NOT_READY = enum.auto()


NOT_READY: Final = NotReady.NOT_READY
"""What `Ready.poll` returns when the next item is not there yet (or a step is pending)."""


@types.coroutine
def _resume(step: Coroutine[Any, Any, _R], waits_on: Any) -> Generator[Any, Any, _R]:
    """Finish `step`, which already ran by hand up to its first suspension, where it yielded
    `waits_on`: `yield from step` from that point on (what the task sends or throws goes to it)."""
    yielded = waits_on
    while True:
        try:
            sent = yield yielded
        except GeneratorExit:
            step.close()
            raise
        except BaseException as error:
            try:
                yielded = step.throw(error)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
        else:
            try:
                yielded = step.send(sent)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]


class Ready(Generic[_T]):
    """`source`'s items, with `poll()` for the next one if it is ready (module docstring)."""

    __slots__ = ("_error", "_generator", "_source", "_step", "_waits_on")

    def __init__(self, source: AsyncIterator[_T]) -> None:
        self._source = source
        self._generator: AsyncGenerator[_T, None] | None = (
            source if isinstance(source, types.AsyncGeneratorType) else None
        )
        self._step: Coroutine[Any, Any, _T] | None = None
        """The `__anext__` that `poll` started and that suspended, waiting on `_waits_on`."""
        self._waits_on: Any = None
        self._error: BaseException | None = None
        """What `poll` met (StopAsyncIteration at the end), raised by the next `__anext__`."""

    def __aiter__(self) -> Ready[_T]:
        return self

    async def __anext__(self) -> _T:
        """The next item, waiting for it as `source` does."""
        step = self._step
        if step is not None:
            self._step = None
            waits_on, self._waits_on = self._waits_on, None
            return await _resume(step, waits_on)
        error = self._error
        if error is not None:
            self._error = None
            raise error
        return await anext(self._source)

    def poll(self) -> _T | NotReady:
        """The next item if `source` produces it without suspending; else NOT_READY, at once."""
        generator = self._generator
        if generator is None or self._step is not None or self._error is not None:
            return NOT_READY
        step = generator.__anext__()
        try:
            waits_on = step.send(None)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        except Exception as error:  # StopAsyncIteration, or what `source` raised: after the batch
            self._error = error
            return NOT_READY
        self._step, self._waits_on = step, waits_on
        return NOT_READY

    @property
    def pending(self) -> bool:
        """Whether `poll` left a step half-run (the next `anext` finishes it)."""
        return self._step is not None

    async def cancel_pending(self) -> None:
        """Cancel the half-run step where it waits, as `Task.cancel()` does to the task awaiting it,
        and run it to its end. Raises what the step raised (CancelledError when `source` let the
        cancellation through, or the error it turned it into); an item it produced instead is
        dropped, and its end is not an error."""
        step = self._step
        if step is None:
            return
        self._step = None
        waits_on, self._waits_on = self._waits_on, None
        if isinstance(waits_on, asyncio.Future):
            waits_on.cancel()
        try:
            waits_on = step.throw(asyncio.CancelledError())
        except (StopIteration, StopAsyncIteration):
            return
        try:
            await _resume(step, waits_on)
        except StopAsyncIteration:
            return

    async def aclose(self) -> None:
        """Cancel a half-run step (a CancelledError it ends with is not raised), then close `source`
        (its `aclose`, if it has one)."""
        if self._step is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self.cancel_pending()
        self._error = None
        aclose = getattr(self._source, "aclose", None)
        if aclose is not None:
            await aclose()


__all__ = ["NOT_READY", "NotReady", "Ready"]
