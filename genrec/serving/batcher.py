"""Micro-batching: concurrent requests gathered into one model call on a single worker thread.

Each `MicroBatcher.submit` queues a list of queries (one request's histories) and awaits its own slice of the
results. A worker task takes queued requests in arrival order until the batch holds `max_batch_size` queries (a
request is never split; one larger than that runs alone). When the previous batch held more than one query (clients
are concurrent) it waits at most `max_wait_ms` for more when the queue runs short; a lone client never waits.
It runs ``fn(queries)`` on its one thread (the model is not thread-safe; loading also runs there). The queue
is bounded: past `max_queue` waiting queries `submit` raises `QueueFull` at once (the server answers 503 with
Retry-After). `stop` refuses new work, drains what is queued, then ends the thread.

Example:
    >>> async def demo():
    ...     batcher = MicroBatcher(lambda qs: [q * 2 for q in qs], max_batch_size=8, max_wait_ms=1, max_queue=16)
    ...     batcher.start()
    ...     out = await asyncio.gather(batcher.submit([1, 2]), batcher.submit([3]))
    ...     await batcher.stop()
    ...     return out
    >>> asyncio.run(demo())
    [[2, 4], [6]]
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)


class Unavailable(RuntimeError):
    """The batcher takes no more work now (queue full, or shutting down); retry later."""


class QueueFull(Unavailable):
    """More queries are waiting than the queue holds."""


@dataclass
class _Job:
    queries: Sequence[Any]
    future: asyncio.Future


class MicroBatcher:
    """Gathers concurrent `submit` calls into batched ``fn(queries) -> results`` calls (one result per query)."""

    def __init__(self, fn: Callable[[list], list], *, max_batch_size: int, max_wait_ms: float, max_queue: int,
                 on_batch: Callable[[int, float], None] | None = None):
        if max_batch_size < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError(f"max_batch_size={max_batch_size}, max_queue={max_queue} must be >= 1 and "
                             f"max_wait_ms={max_wait_ms} >= 0")
        self.fn, self.max_batch_size, self.max_queue = fn, max_batch_size, max_queue
        self.max_wait_s = max_wait_ms / 1000
        self.on_batch = on_batch
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="genrec-model")
        self._jobs: deque[_Job] = deque()
        self._queued = 0
        self._closing = False
        self._last_size = 0  # queries in the previous batch: > 1 means concurrent clients, worth a short wait
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    @property
    def depth(self) -> int:
        """Queries waiting for the model (not counting the batch it is running)."""
        return self._queued

    def start(self) -> None:
        """Start the worker task on the running event loop."""
        self._wakeup = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="genrec-batcher")

    async def run_in_worker(self, fn: Callable, *args):
        """Run ``fn(*args)`` on the model thread (e.g. loading the model), off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def submit(self, queries: Sequence[Any]) -> list:
        """Queue `queries` and return their results, in order, once their batch has run."""
        if self._closing or self._task is None:
            raise Unavailable("the server is shutting down" if self._closing else "the batcher is not running")
        if self._queued + len(queries) > self.max_queue:
            raise QueueFull(f"{self._queued} queries are waiting (queue holds {self.max_queue}); retry shortly")
        future = asyncio.get_running_loop().create_future()
        self._jobs.append(_Job(list(queries), future))
        self._queued += len(queries)
        self._wakeup.set()
        return await future

    async def stop(self) -> None:
        """Refuse new work, finish every queued request, then stop the worker thread."""
        self._closing = True
        if self._task is not None:
            self._wakeup.set()
            await self._task
        self.executor.shutdown(wait=True)

    async def _run(self) -> None:
        while True:
            if not self._jobs:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            await self._execute(await self._gather())

    def _take(self, batch: list[_Job], size: int) -> int:
        """Move queued jobs into `batch` while they fit; returns the batch's query count."""
        while self._jobs and (not batch or size + len(self._jobs[0].queries) <= self.max_batch_size):
            job = self._jobs.popleft()
            self._queued -= len(job.queries)
            if not job.future.done():  # done here means its client went away
                batch.append(job)
                size += len(job.queries)
        return size

    async def _gather(self) -> list[_Job]:
        loop = asyncio.get_running_loop()
        # wait only under concurrency: a lone client never pays max_wait, while 32 clients answered in one batch
        # come back within a few ms and fill the next one instead of splitting into two alternating half-batches
        deadline = loop.time() + (self.max_wait_s if self._last_size > 1 else 0.0)
        batch: list[_Job] = []
        size = 0
        while True:
            size = self._take(batch, size)
            remaining = deadline - loop.time()
            if size >= self.max_batch_size or self._jobs or remaining <= 0 or self._closing:
                return batch
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    async def _execute(self, batch: list[_Job]) -> None:
        if not batch:
            return
        queries = [q for job in batch for q in job.queries]
        self._last_size = len(queries)
        start = time.perf_counter()
        try:
            results = await self.run_in_worker(self.fn, queries)
            if len(results) != len(queries):
                raise RuntimeError(f"batch function returned {len(results)} results for {len(queries)} queries")
        except Exception as error:  # every request of the batch gets the error; the server keeps running
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(error)
            return
        finally:
            if self.on_batch is not None:
                self.on_batch(len(queries), time.perf_counter() - start)
        offset = 0
        for job in batch:
            if not job.future.done():
                job.future.set_result(results[offset:offset + len(job.queries)])
            offset += len(job.queries)
