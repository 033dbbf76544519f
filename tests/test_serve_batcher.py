"""The dynamic batcher behind `cvkit serve`: requests answered one by one from batches run in one
worker thread, a crash failing only its own request, the event loop never blocked, a clean stop."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from cvkit.serve.batcher import DynamicBatcher, Stopping


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=30))


class Model:
    """Doubles numbers, one batch at a time, recording each batch and the thread it ran on."""

    def __init__(self, seconds: float = 0.0, bad=()):
        self.seconds, self.bad, self.batches, self.threads = seconds, set(bad), [], set()

    def __call__(self, items):
        self.batches.append(list(items))
        self.threads.add(threading.get_ident())
        time.sleep(self.seconds)
        if self.bad & set(items):
            raise ValueError(f"cannot take {sorted(self.bad & set(items))}")
        return [2 * x for x in items]


async def _serve(model, items, **kw):
    batcher = DynamicBatcher(model, **kw)
    await batcher.start()
    results = await asyncio.gather(*(batcher.submit(x) for x in items), return_exceptions=True)
    await batcher.stop()
    return batcher, results


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer():
    model = Model(seconds=0.05)
    batcher, results = run(_serve(model, range(40), max_batch=8, max_wait_ms=20))
    assert results == [2 * x for x in range(40)]
    assert max(map(len, model.batches)) == 8 and len(model.batches) < 40  # batched, never above max_batch
    assert sorted(x for b in model.batches for x in b) == list(range(40))  # each ran once
    assert len(model.threads) == 1 and threading.get_ident() not in model.threads  # one worker, not the loop
    assert batcher.stats.requests == 40 and batcher.stats.largest == 8


def test_max_batch_1_runs_every_request_alone():
    model = Model()
    _, results = run(_serve(model, range(5), max_batch=1, max_wait_ms=50))
    assert results == [0, 2, 4, 6, 8] and all(len(b) == 1 for b in model.batches)


def test_a_request_that_crashes_the_model_fails_alone():
    model = Model(seconds=0.01, bad={3})
    _, results = run(_serve(model, range(8), max_batch=8, max_wait_ms=50))
    assert isinstance(results[3], ValueError) and "cannot take [3]" in str(results[3])
    assert [r for i, r in enumerate(results) if i != 3] == [2 * x for x in range(8) if x != 3]


def test_a_result_that_is_an_exception_fails_that_request():
    def model(items):
        return [KeyError(x) if x % 2 else x for x in items]

    _, results = run(_serve(model, range(4), max_batch=4, max_wait_ms=20))
    assert results[0] == 0 and results[2] == 2
    assert isinstance(results[1], KeyError) and isinstance(results[3], KeyError)


def test_the_event_loop_keeps_running_while_the_model_works():
    async def main():
        batcher = DynamicBatcher(Model(seconds=0.3), max_batch=4, max_wait_ms=1)
        await batcher.start()
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        assert await batcher.submit(21) == 42
        task.cancel()
        await batcher.stop()
        return ticks

    assert run(main()) >= 3  # 0.3 s of model time, a tick every 0.01 s; a blocked loop gives none


def test_stop_answers_what_is_queued_and_refuses_the_rest():
    async def main():
        model = Model(seconds=0.05)
        batcher = DynamicBatcher(model, max_batch=2, max_wait_ms=1)
        await batcher.start()
        pending = [asyncio.create_task(batcher.submit(x)) for x in range(6)]
        await asyncio.sleep(0)  # queued
        await batcher.stop()
        with pytest.raises(Stopping):
            await batcher.submit(99)
        return [t.result() for t in pending]

    assert run(main()) == [0, 2, 4, 6, 8, 10]


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="max_batch"):
        DynamicBatcher(Model(), max_batch=0)
    with pytest.raises(ValueError, match="max_wait_ms"):
        DynamicBatcher(Model(), max_wait_ms=-1)
