"""`Ready`: an async generator's items, and the ones it has ready without waiting (ready.py).

The generator must run exactly as if it had been awaited: in the caller's task, woken by what it
waits on, cancelled where it waits, its errors and its end after the items before them.
"""

from __future__ import annotations

import asyncio
import contextvars
import random
from collections.abc import AsyncIterator

import pytest

from services.agent_service.ready import NOT_READY, Ready

WHO: contextvars.ContextVar[str] = contextvars.ContextVar("who", default="-")


async def _batches(ready: Ready[int]) -> list[list[int]]:
    """What `ChatService._stream` does: one awaited item, then every ready one; a write between."""
    batches: list[list[int]] = []
    async for first in ready:
        batch = [first]
        while (item := ready.poll()) is not NOT_READY:
            batch.append(item)
        batches.append(batch)
        await asyncio.sleep(0)  # the write: other tasks run while a step may be half-run
    return batches


async def test_items_produced_back_to_back_come_together_and_a_wait_ends_the_batch() -> None:
    gate = asyncio.get_running_loop().create_future()

    async def source() -> AsyncIterator[int]:
        yield 1
        yield 2
        yield 3
        await asyncio.sleep(0)  # a bare yield to the loop ends a batch too
        yield 4
        yield 5
        await gate  # a real wait
        yield 6

    ready = Ready(source())
    assert await anext(ready) == 1
    assert ready.poll() == 2
    assert ready.poll() == 3
    assert ready.poll() is NOT_READY and ready.pending
    assert ready.poll() is NOT_READY  # while a step is pending, nothing more is started
    assert await anext(ready) == 4
    assert ready.poll() == 5
    assert ready.poll() is NOT_READY
    asyncio.get_running_loop().call_later(0.01, gate.set_result, None)
    assert await anext(ready) == 6  # woken by what it waited on
    assert ready.poll() is NOT_READY  # the end is kept for the next anext
    with pytest.raises(StopAsyncIteration):
        await anext(ready)


async def test_the_generator_runs_in_the_callers_task_and_context() -> None:
    seen: list[tuple[asyncio.Task[object] | None, str]] = []
    gate = asyncio.Event()

    async def source() -> AsyncIterator[int]:
        seen.append((asyncio.current_task(), WHO.get()))
        yield 1
        seen.append((asyncio.current_task(), WHO.get()))
        yield 2
        await gate.wait()
        seen.append((asyncio.current_task(), WHO.get()))
        yield 3

    async def consume() -> list[list[int]]:
        WHO.set("consumer")
        asyncio.get_running_loop().call_later(0.01, gate.set)
        return await _batches(Ready(source()))

    task = asyncio.create_task(consume())
    assert await task == [[1, 2], [3]]
    assert seen == [(task, "consumer")] * 3


async def test_an_error_comes_after_the_items_before_it() -> None:
    async def source() -> AsyncIterator[int]:
        yield 1
        yield 2
        raise ValueError("boom")

    ready = Ready(source())
    assert await anext(ready) == 1
    assert ready.poll() == 2
    assert ready.poll() is NOT_READY
    with pytest.raises(ValueError, match="boom"):
        await anext(ready)


async def test_an_error_after_a_wait_is_raised_by_the_anext_that_finishes_the_step() -> None:
    async def source() -> AsyncIterator[int]:
        yield 1
        await asyncio.sleep(0.001)
        raise KeyError("late")

    ready = Ready(source())
    assert await anext(ready) == 1
    assert ready.poll() is NOT_READY and ready.pending
    with pytest.raises(KeyError, match="late"):
        await anext(ready)


async def test_cancelling_the_task_while_it_finishes_a_step_reaches_the_generator_where_it_waits() -> None:
    seen: list[str] = []
    started = asyncio.Event()

    async def source() -> AsyncIterator[int]:
        yield 1
        try:
            started.set()
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            seen.append("cancelled in sleep")
            raise
        finally:
            seen.append("cleaned up")
        yield 2  # pragma: no cover

    async def consume() -> None:
        ready = Ready(source())
        await anext(ready)
        assert ready.poll() is NOT_READY and ready.pending
        await anext(ready)

    task = asyncio.create_task(consume())
    await started.wait()
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen == ["cancelled in sleep", "cleaned up"]


async def test_a_timeout_inside_the_generator_works_across_a_resumed_step() -> None:
    async def source() -> AsyncIterator[int]:
        yield 1
        try:
            async with asyncio.timeout(0.01):
                await asyncio.sleep(30)
        except TimeoutError:
            yield -1

    ready = Ready(source())
    assert await anext(ready) == 1
    assert ready.poll() is NOT_READY
    assert await anext(ready) == -1


async def test_cancel_pending_cancels_the_step_as_task_cancel_would() -> None:
    seen: list[str] = []
    inner_started = asyncio.Event()
    awaited: list[asyncio.Task[None]] = []

    async def inner() -> None:
        inner_started.set()
        await asyncio.sleep(30)

    async def source() -> AsyncIterator[int]:
        yield 1
        waited = asyncio.ensure_future(inner())
        awaited.append(waited)
        try:
            await waited
        except asyncio.CancelledError:
            seen.append("cancelled")
            await asyncio.sleep(0.001)  # cleanup that awaits, as a shielded save does
            seen.append("saved")
            raise
        yield 2  # pragma: no cover

    ready = Ready(source())
    assert await anext(ready) == 1
    assert ready.poll() is NOT_READY
    await inner_started.wait()
    with pytest.raises(asyncio.CancelledError):
        await ready.cancel_pending()
    assert seen == ["cancelled", "saved"]
    assert not ready.pending
    # the task it awaited was cancelled with it, as Task.cancel() cancels what its task waits on
    assert awaited[0].cancelled()


async def test_cancel_pending_raises_what_the_generator_turns_the_cancellation_into() -> None:
    class Lost(Exception):
        pass

    async def source() -> AsyncIterator[int]:
        yield 1
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise Lost("the lease") from None
        yield 2  # pragma: no cover

    ready = Ready(source())
    await anext(ready)
    assert ready.poll() is NOT_READY
    with pytest.raises(Lost):
        await ready.cancel_pending()


async def test_aclose_cancels_a_pending_step_and_closes_the_generator() -> None:
    seen: list[str] = []

    async def source() -> AsyncIterator[int]:
        try:
            yield 1
            await asyncio.Event().wait()
            yield 2  # pragma: no cover
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise
        except GeneratorExit:  # pragma: no cover - not this path
            seen.append("closed")
            raise

    generator = source()
    ready = Ready(generator)
    await anext(ready)
    assert ready.poll() is NOT_READY
    await ready.aclose()
    assert seen == ["cancelled"]
    with pytest.raises(StopAsyncIteration):
        await anext(generator)

    # without a pending step, aclose closes the generator at its yield, as before
    seen.clear()
    ready = Ready(source())
    await anext(ready)
    await ready.aclose()
    assert seen == ["closed"]


async def test_other_async_iterators_are_only_awaited() -> None:
    class Counter:
        def __init__(self) -> None:
            self.n = 0

        def __aiter__(self) -> Counter:
            return self

        async def __anext__(self) -> int:
            self.n += 1
            if self.n > 3:
                raise StopAsyncIteration
            return self.n

    ready = Ready(Counter())
    assert await _batches(ready) == [[1], [2], [3]]


@pytest.mark.parametrize("seed", range(20))
async def test_batches_concatenate_to_the_plain_iteration(seed: int) -> None:
    """Whatever the mix of ready items, bare yields and real waits, nothing is lost or reordered,
    and a batch never spans a wait."""

    def plan() -> list[str]:
        rng = random.Random(seed)
        return [rng.choice(["item", "item", "item", "yield", "sleep", "future"]) for _ in range(60)]

    async def source(marks: list[int]) -> AsyncIterator[int]:
        n = 0
        for step in plan():
            if step == "item":
                n += 1
                yield n
                continue
            marks.append(n)  # a wait after item n: n ends a batch
            if step == "yield":
                await asyncio.sleep(0)
            elif step == "sleep":
                await asyncio.sleep(0.0005)
            else:
                future = asyncio.get_running_loop().create_future()
                asyncio.get_running_loop().call_soon(future.set_result, None)
                await future

    plain = [item async for item in source([])]
    marks: list[int] = []
    batches = await _batches(Ready(source(marks)))
    assert [item for batch in batches for item in batch] == plain
    ends = {batch[-1] for batch in batches}
    assert ends == ({mark for mark in marks if mark} | {plain[-1]}) & set(plain)
