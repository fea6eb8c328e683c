"""An asyncio dynamic batcher: images from concurrent requests -> one backend call -> answers back.

The contract (LitServe's): decode -> batch -> predict -> unbatch. A batch closes when it holds `max_batch_size`
images or `max_wait` seconds after its first image was queued, whichever comes first -- and at once when nothing
else can join it: the queue is empty and no request is between arrival and queueing (see `expecting`), so a
lone request does not sit out the wait. The batch is stacked and the backend runs in a worker thread, so the event
loop keeps accepting, decoding and queueing while a batch computes. Up to `batches_in_flight` batches run at once
(a thread each): with 2, a GPU backend's host work for one batch (stacking, casting, copying) overlaps the GPU's
work on the one before; the next batch is collected only once a slot is free, so images arriving meanwhile fill
it. An image whose
request has given up (deadline passed, client gone) is dropped from the queue and never computed. A backend
error, or a backend that returns the wrong number of outputs, fails exactly the images of that batch.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


class QueueFullError(Exception):
    """The queue holds max_queue images already: try again later (503)."""


class ShuttingDownError(Exception):
    """The server is draining for shutdown and takes no new work (503)."""


class DeadlineExceededError(Exception):
    """The request was not answered within its timeout (504)."""


class BatchFailedError(Exception):
    """The backend failed on the batch this image was part of (500)."""


@dataclass
class BatchStats:
    """What happened to one request's images: the slowest image's queue wait, and its batch's inference time."""

    queue_wait_s: float = 0.0
    inference_s: float = 0.0
    batch_sizes: list[int] = field(default_factory=list)


@dataclass
class _Item:
    image: Any  # C, H, W; or what `collate` takes
    future: asyncio.Future
    queued_at: float


class DynamicBatcher:
    """Collects images into batches for `infer` ((N, C, H, W) -> (N, classes)), up to `batches_in_flight` batches
    at a time (`infer` must then be safe to call from that many threads at once).

    With `collate` (default: np.stack of (C, H, W) arrays) the images may be anything `infer` takes as a batch: the
    encoded files a runtime that decodes on its own device takes, as a list. Such an `infer` may answer an image
    with an exception instead of its output (a file it cannot decode): that image's request fails with it, and the
    rest of the batch is answered."""

    def __init__(
        self,
        infer: Callable[[Any], Sequence[np.ndarray | Exception]],
        *,
        collate: Callable[[list[Any]], Any] = np.stack,
        max_batch_size: int,
        max_wait_s: float,
        max_queue: int,
        batches_in_flight: int = 1,
        on_batch: Callable[[int, float, list[float]], None] | None = None,
        on_queue_depth: Callable[[int], None] | None = None,
        on_computing: Callable[[int], None] | None = None,
    ):
        if max_batch_size < 1 or max_queue < 1 or batches_in_flight < 1 or max_wait_s < 0:
            raise ValueError("max_batch_size, max_queue and batches_in_flight must be >= 1, max_wait_s >= 0")
        self.infer = infer
        self.collate = collate
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.batches_in_flight = batches_in_flight
        self._on_batch = on_batch or (lambda size, seconds, waits: None)
        self._on_queue_depth = on_queue_depth or (lambda depth: None)
        self._on_computing = on_computing or (lambda batches: None)
        self._queue: collections.deque[_Item] = collections.deque()
        self._arrived = asyncio.Event()
        self._collecting: list[_Item] = []  # the batch being filled, out of the queue already
        self._running: set[asyncio.Task] = set()  # batches computing
        self._executor = ThreadPoolExecutor(max_workers=batches_in_flight, thread_name_prefix="vitserve-infer")
        self._worker: asyncio.Task | None = None
        self._accepting = False
        self._incoming = 0  # requests decoding their images, about to be submitted

    @contextlib.contextmanager
    def expecting(self):
        """Wrap a request's decoding in this: while any request is inside, an open batch waits for it."""
        self._incoming += 1
        try:
            yield
        finally:
            self._incoming -= 1

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        self._accepting = True
        self._worker = asyncio.get_running_loop().create_task(self._run(), name="vitserve-batcher")

    async def stop(self, drain_timeout_s: float = 30.0) -> None:
        """Refuses new work, lets queued and running batches finish (up to the timeout), then stops."""
        self._accepting = False
        self._arrived.set()  # a batch waiting for more images closes now
        try:
            await asyncio.wait_for(self._drained(), drain_timeout_s)
        except asyncio.TimeoutError:
            log.warning("drain timed out with %d images queued and %d batches computing; failing them",
                        len(self._queue) + len(self._collecting), len(self._running))
        for task in [self._worker, *self._running]:
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        for item in [*self._collecting, *self._queue]:
            if not item.future.done():
                item.future.set_exception(ShuttingDownError("the server shut down before this image was computed"))
        self._queue.clear()
        self._executor.shutdown(wait=True)

    async def _drained(self) -> None:
        while self._queue or self._collecting or self._running:
            await asyncio.sleep(0.005)

    async def submit(self, images: Sequence[Any], timeout_s: float) -> tuple[np.ndarray, BatchStats]:
        """Queues a request's images ((N, C, H, W), or what `collate` takes); returns their outputs (N, classes) in
        order, and stats.

        Raises QueueFullError / ShuttingDownError at once, DeadlineExceededError after `timeout_s`, or
        BatchFailedError when the backend failed on a batch that held one of these images.
        """
        if not self._accepting:
            raise ShuttingDownError("the server is shutting down")
        if len(self._queue) + len(images) > self.max_queue:
            raise QueueFullError(f"the queue is full ({len(self._queue)} of {self.max_queue} images waiting)")
        loop = asyncio.get_running_loop()
        now = time.perf_counter()
        items = [_Item(image, loop.create_future(), now) for image in images]
        self._queue.extend(items)
        self._on_queue_depth(len(self._queue))
        self._arrived.set()
        futures = [item.future for item in items]
        try:
            results = await asyncio.wait_for(asyncio.gather(*futures), timeout_s)
        except asyncio.TimeoutError:
            raise DeadlineExceededError(f"no answer within {timeout_s * 1000:.0f} ms") from None
        finally:
            for f in futures:  # a request that gave up: its images still queued are skipped, not computed
                f.cancel()
        stats = BatchStats()
        for _output, wait_s, infer_s, size in results:
            stats.queue_wait_s = max(stats.queue_wait_s, wait_s)
            stats.inference_s = max(stats.inference_s, infer_s)
            stats.batch_sizes.append(size)
        return np.stack([r[0] for r in results]), stats

    def _next_live(self) -> _Item | None:
        while self._queue:
            item = self._queue.popleft()
            if not item.future.done():
                return item
        return None

    async def _collect(self) -> list[_Item]:
        """Waits for a first image, then fills the batch until it is full or its wait time is up."""
        while True:
            first = self._next_live()
            if first is not None:
                break
            self._arrived.clear()
            await self._arrived.wait()
        batch = self._collecting = [first]
        close_at = first.queued_at + self.max_wait_s
        while len(batch) < self.max_batch_size:
            item = self._next_live()
            if item is not None:
                batch.append(item)
                continue
            remaining = close_at - time.perf_counter()
            if remaining <= 0 or self._incoming == 0 or not self._accepting:  # stopping: no image can join
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:
                break
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        slots = asyncio.Semaphore(self.batches_in_flight)
        while True:
            await slots.acquire()  # collecting starts once a batch may run: until then the queue fills
            batch = await self._collect()
            self._on_queue_depth(len(self._queue))
            task = loop.create_task(self._execute(loop, batch))
            self._collecting = []
            self._running.add(task)
            self._on_computing(len(self._running))
            task.add_done_callback(lambda t: self._finished(t, slots))

    def _finished(self, task: asyncio.Task, slots: asyncio.Semaphore) -> None:
        self._running.discard(task)
        self._on_computing(len(self._running))
        slots.release()

    def _infer(self, images: list[Any]) -> Sequence[np.ndarray | Exception]:
        return self.infer(self.collate(images))  # in the worker thread: stacking a large batch takes tens of ms

    async def _execute(self, loop: asyncio.AbstractEventLoop, batch: list[_Item]) -> None:
        started = time.perf_counter()
        waits = [started - item.queued_at for item in batch]
        try:
            outputs = await loop.run_in_executor(self._executor, self._infer, [i.image for i in batch])
            if len(outputs) != len(batch):
                raise BatchFailedError(f"the backend returned {len(outputs)} outputs for {len(batch)} images")
        except asyncio.CancelledError:  # stop() after its drain timed out: the requests learn why at once
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(ShuttingDownError("the server shut down while this image computed"))
            raise
        except Exception as e:  # noqa: BLE001 - any backend failure fails this batch only
            log.exception("batch of %d failed", len(batch))
            error = e if isinstance(e, BatchFailedError) else BatchFailedError(f"inference failed: {e}")
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(error)
            return
        seconds = time.perf_counter() - started
        self._on_batch(len(batch), seconds, waits)
        for item, output, wait in zip(batch, outputs, waits):
            if item.future.done():
                continue
            if isinstance(output, Exception):  # this image alone (a file the runtime could not decode)
                item.future.set_exception(output)
            else:
                item.future.set_result((output, wait, seconds, len(batch)))
