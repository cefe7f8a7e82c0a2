"""Dynamic batching: images from concurrent requests are grouped into one forward pass.

A model on a CPU or GPU computes a batch of 32 in far less than 32 times a single image's time; a server
that ran each request alone would waste that. Each request's images join one bounded queue; a loop takes
the first waiting image, gathers whatever else arrives within ``max_wait`` (up to ``max_batch``), and runs the
batch on the model thread. Beyond ``queue_limit`` waiting images a request is refused at once
(:class:`Overloaded`: the server answers 503 and stays responsive) rather than queued without bound.
"""

from __future__ import annotations

import asyncio
import math
from concurrent.futures import Executor
from typing import Callable, Generic, Sequence, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class Overloaded(RuntimeError):
    """The queue is full: the request should be retried after ``retry_after`` seconds."""

    def __init__(self, waiting: int, limit: int, retry_after: int):
        super().__init__(f"the server is busy ({waiting} images waiting, at most {limit}); "
                         f"retry in {retry_after} s")
        self.retry_after = retry_after


class DynamicBatcher(Generic[Item, Result]):
    """Runs ``compute`` (a list of items → one result per item, in order) on ``executor``, over batches
    gathered from concurrent :meth:`submit` calls. ``on_batch`` is told each batch's size and compute seconds
    (metrics)."""

    def __init__(self, compute: Callable[[list[Item]], Sequence[Result]], executor: Executor, max_batch: int,
                 max_wait: float, queue_limit: int, on_batch: Callable[[int, float], None] | None = None):
        self.compute, self.executor = compute, executor
        self.max_batch, self.max_wait, self.queue_limit = max_batch, max_wait, queue_limit
        self.on_batch = on_batch
        self.waiting = 0                  # images queued or being computed
        self._queue: asyncio.Queue | None = None
        self._loop_task: asyncio.Task | None = None
        self._seconds_per_image = 0.05    # a running estimate, for Retry-After

    def start(self) -> None:
        """Start the batching loop on the running event loop (the server's start-up)."""
        self._queue = asyncio.Queue()
        self._loop_task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop the loop; requests still waiting are answered with an error, none is left hanging."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        while self._queue is not None and not self._queue.empty():
            _, future = self._queue.get_nowait()
            if not future.done():
                future.set_exception(RuntimeError("the server is shutting down"))

    def admit(self, count: int) -> None:
        """Raise :class:`Overloaded` if ``count`` more images do not fit in the queue now: a server asks before
        it spends time decoding a request that would be refused."""
        if self.waiting + count > self.queue_limit:
            retry = max(1, math.ceil(self.waiting * self._seconds_per_image))
            raise Overloaded(self.waiting, self.queue_limit, retry)

    async def submit(self, items: Sequence[Item]) -> list[Result]:
        """The results of ``items``, computed in batches with other requests' items; raises
        :class:`Overloaded` at once when they do not fit in the queue."""
        if self._queue is None:
            raise RuntimeError("the batcher is not started")
        self.admit(len(items))
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in items]
        self.waiting += len(items)
        for item, future in zip(items, futures):
            self._queue.put_nowait((item, future))
        return list(await asyncio.gather(*futures))

    async def _next_batch(self) -> list[tuple[Item, asyncio.Future]]:
        """The first waiting item, then every item that arrives within ``max_wait`` (``max_batch`` at most)."""
        batch = [await self._queue.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait
        while len(batch) < self.max_batch:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), left))
            except asyncio.TimeoutError:
                break
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            live = [(item, future) for item, future in batch if not future.done()]  # a client may have gone
            try:
                if live:
                    started = loop.time()
                    results = await loop.run_in_executor(self.executor, self.compute, [i for i, _ in live])
                    seconds = loop.time() - started
                    self._seconds_per_image = 0.8 * self._seconds_per_image + 0.2 * seconds / len(live)
                    if self.on_batch:
                        self.on_batch(len(live), seconds)
                    for (_, future), result in zip(live, results):
                        if not future.done():
                            future.set_result(result)
            except Exception as err:  # one bad batch fails its own requests, never the loop
                for _, future in live:
                    if not future.done():
                        future.set_exception(err)
            finally:
                self.waiting -= len(batch)
