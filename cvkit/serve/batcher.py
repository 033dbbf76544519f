"""Dynamic batching for `cvkit serve`: requests arrive one by one on the event loop, the model runs on
batches of them in one worker thread, and each request gets its own answer.

The collector takes the first waiting request, then keeps taking more until ``max_batch`` are in
hand or ``max_wait_ms`` have passed since the first, and hands the batch to the worker thread; while
the model runs, new requests queue up and form the next batch, so batches grow with the load and a
lone request waits at most ``max_wait_ms``. The event loop never runs the model.

``run_batch(items) -> results`` (one per item, in order) runs in the worker. A result that is an
exception fails that request alone. If ``run_batch`` raises for a whole batch, each of its items is
run again on its own, so one request that crashes the model fails alone and the others in its
batch are still answered. Nothing here imports torch: an ``.onnx`` model is served without it.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field


class Stopping(RuntimeError):
    """The batcher was stopped: it takes no new requests."""


@dataclass
class BatchStats:
    """What the batcher has done: batches run, requests answered, the largest batch."""

    batches: int = 0
    requests: int = 0
    largest: int = 0
    sizes: dict[int, int] = field(default_factory=dict)  # batch size -> how many batches had it

    def add(self, size: int) -> None:
        self.batches += 1
        self.requests += size
        self.largest = max(self.largest, size)
        self.sizes[size] = self.sizes.get(size, 0) + 1


class DynamicBatcher:
    """Collects requests into batches for ``run_batch`` (see the module docstring). Use it inside a
    running event loop: ``await start()``, ``await submit(item)`` from any number of tasks,
    ``await stop()`` to finish what is queued and in flight and refuse the rest."""

    def __init__(self, run_batch, *, max_batch: int = 32, max_wait_ms: float = 5.0):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be 0 or more, got {max_wait_ms}")
        self.run_batch, self.max_batch, self.max_wait = run_batch, max_batch, max_wait_ms / 1000
        self.stats = BatchStats()
        self._queue: asyncio.Queue | None = None
        self._collector: asyncio.Task | None = None
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cvkit-model")
        self._stopping = False

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._collector = asyncio.get_running_loop().create_task(self._collect(), name="cvkit-batcher")

    async def submit(self, item):
        """The item's result, once its batch has run; raises its error, or :class:`Stopping`."""
        if self._stopping or self._queue is None:
            raise Stopping("the server is stopping" if self._stopping else "the batcher is not started")
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((item, future))
        return await future

    async def stop(self) -> None:
        """Refuse new requests, answer every queued one, wait for the batch in flight, end the worker."""
        self._stopping = True
        if self._queue is not None:
            await self._queue.put(None)  # after everything already queued
        if self._collector is not None:
            await self._collector
        self._worker.shutdown(wait=True)

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self._queue.get()
            if first is None:
                return
            batch, last = [first], False
            deadline = loop.time() + self.max_wait
            while len(batch) < self.max_batch:
                try:
                    entry = self._queue.get_nowait() if loop.time() >= deadline else \
                        await asyncio.wait_for(self._queue.get(), deadline - loop.time())
                except (asyncio.QueueEmpty, asyncio.TimeoutError):
                    break
                if entry is None:
                    last = True
                    break
                batch.append(entry)
            await self._answer(batch)
            if last:
                return

    async def _answer(self, batch: list) -> None:
        items = [item for item, _ in batch]
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(self._worker, _checked, self.run_batch, items)
        except Exception:  # noqa: BLE001 - one item crashed the batch: find which, run each alone
            results = [await loop.run_in_executor(self._worker, _alone, self.run_batch, item) for item in items]
        self.stats.add(len(batch))
        for (_, future), result in zip(batch, results):
            if future.cancelled():  # the client went away
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)


def _checked(run_batch, items: list) -> list:
    results = list(run_batch(items))
    if len(results) != len(items):
        raise RuntimeError(f"run_batch gave {len(results)} results for {len(items)} requests")
    return results


def _alone(run_batch, item):
    try:
        return _checked(run_batch, [item])[0]
    except Exception as exc:  # noqa: BLE001 - this request's own failure, answered to it alone
        return exc
