"""The dynamic batcher without HTTP: closing rules, deadlines, queue bound, failure isolation, output count, drain."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from vitserve.server.batching import (
    BatchFailedError,
    DeadlineExceededError,
    DynamicBatcher,
    QueueFullError,
    ShuttingDownError,
)


class FakeBackend:
    """Records every batch; output row i = the image's first value (so answers can be matched to requests)."""

    def __init__(self, delay_s: float = 0.0, fail_when=None, drop_one: bool = False):
        self.batches: list[list[float]] = []
        self.delay_s = delay_s
        self.fail_when = fail_when
        self.drop_one = drop_one
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.gate.wait(5)
        ids = [float(img.flat[0]) for img in x]
        self.batches.append(ids)
        time.sleep(self.delay_s)
        if self.fail_when is not None and self.fail_when(ids):
            raise RuntimeError("backend exploded")
        out = np.array(ids, dtype=np.float32)[:, None].repeat(3, axis=1)
        return out[:-1] if self.drop_one else out


def images(*ids: float) -> np.ndarray:
    return np.stack([np.full((1, 2, 2), i, dtype=np.float32) for i in ids])


def run(coro):
    return asyncio.run(coro)


def test_batch_closes_when_full():
    async def main():
        backend = FakeBackend()
        b = DynamicBatcher(backend, max_batch_size=4, max_wait_s=10.0, max_queue=100)
        b.start()
        with b.expecting():  # a request still decoding keeps the batch open...
            started = time.perf_counter()
            results = await asyncio.gather(*[b.submit(images(i), 5) for i in range(4)])
            elapsed = time.perf_counter() - started
        await b.stop()
        return backend, results, elapsed

    backend, results, elapsed = run(main())
    assert backend.batches == [[0.0, 1.0, 2.0, 3.0]]
    assert elapsed < 5, "...but a full batch closes without waiting for it"
    assert [r[0][0, 0] for r in results] == [0.0, 1.0, 2.0, 3.0]
    assert results[0][1].batch_sizes == [4]


def test_batch_closes_after_max_wait():
    async def main():
        backend = FakeBackend()
        b = DynamicBatcher(backend, max_batch_size=8, max_wait_s=0.2, max_queue=100)
        b.start()
        with b.expecting():
            started = time.perf_counter()
            await b.submit(images(1, 2), 5)
            elapsed = time.perf_counter() - started
        await b.stop()
        return backend, elapsed

    backend, elapsed = run(main())
    assert backend.batches == [[1.0, 2.0]]
    assert 0.15 <= elapsed < 2.0


def test_lone_request_does_not_wait():
    async def main():
        b = DynamicBatcher(FakeBackend(), max_batch_size=8, max_wait_s=2.0, max_queue=100)
        b.start()
        started = time.perf_counter()
        await b.submit(images(1), 5)
        elapsed = time.perf_counter() - started
        await b.stop()
        return elapsed

    assert run(main()) < 1.0


def test_requests_arriving_during_compute_form_the_next_batch():
    async def main():
        backend = FakeBackend(delay_s=0.2)
        b = DynamicBatcher(backend, max_batch_size=8, max_wait_s=0.01, max_queue=100)
        b.start()
        first = asyncio.create_task(b.submit(images(0), 5))
        await asyncio.sleep(0.05)  # batch [0] is computing now
        rest = [asyncio.create_task(b.submit(images(i), 5)) for i in (1, 2, 3)]
        await asyncio.gather(first, *rest)
        await b.stop()
        return backend

    assert run(main()).batches == [[0.0], [1.0, 2.0, 3.0]]


def test_queue_bound():
    async def main():
        backend = FakeBackend()
        backend.gate.clear()  # the backend blocks: everything stays queued
        b = DynamicBatcher(backend, max_batch_size=2, max_wait_s=0.0, max_queue=3)
        b.start()
        running = asyncio.create_task(b.submit(images(0, 1), 5))  # taken by the worker, stuck in the backend
        await asyncio.sleep(0.05)
        queued = asyncio.create_task(b.submit(images(2, 3), 5))
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFullError):
            await b.submit(images(4, 5), 5)  # 2 queued + 2 > 3
        backend.gate.set()
        await asyncio.gather(running, queued)
        await b.stop()

    run(main())


def test_expired_request_is_dropped_not_computed():
    async def main():
        backend = FakeBackend()
        backend.gate.clear()
        b = DynamicBatcher(backend, max_batch_size=1, max_wait_s=0.0, max_queue=10)
        b.start()
        blocker = asyncio.create_task(b.submit(images(0), 5))
        await asyncio.sleep(0.05)
        with pytest.raises(DeadlineExceededError):
            await b.submit(images(7), 0.1)  # waits behind the blocked batch and times out
        backend.gate.set()
        await blocker
        await b.submit(images(8), 5)
        await b.stop()
        return backend

    backend = run(main())
    assert backend.batches == [[0.0], [8.0]], "the expired image must not reach the backend"


def test_failing_batch_fails_only_its_requests():
    async def main():
        backend = FakeBackend(fail_when=lambda ids: 13.0 in ids)
        b = DynamicBatcher(backend, max_batch_size=1, max_wait_s=0.0, max_queue=10)
        b.start()
        results = await asyncio.gather(b.submit(images(1), 5), b.submit(images(13), 5), b.submit(images(2), 5),
                                        return_exceptions=True)
        after = await b.submit(images(3), 5)
        await b.stop()
        return results, after

    results, after = run(main())
    assert isinstance(results[1], BatchFailedError) and "backend exploded" in str(results[1])
    assert results[0][0][0, 0] == 1.0 and results[2][0][0, 0] == 2.0
    assert after[0][0, 0] == 3.0


def test_wrong_output_count_fails_the_batch():
    async def main():
        b = DynamicBatcher(FakeBackend(drop_one=True), max_batch_size=4, max_wait_s=0.0, max_queue=10)
        b.start()
        try:
            await b.submit(images(1, 2), 5)
        finally:
            await b.stop()

    with pytest.raises(BatchFailedError, match="1 outputs for 2 images"):
        run(main())


def test_stop_drains_queued_work_and_refuses_new():
    async def main():
        backend = FakeBackend(delay_s=0.05)
        b = DynamicBatcher(backend, max_batch_size=2, max_wait_s=0.0, max_queue=100)
        b.start()
        pending = [asyncio.create_task(b.submit(images(i), 5)) for i in range(6)]
        await asyncio.sleep(0.01)
        stopping = asyncio.create_task(b.stop())
        await asyncio.sleep(0)
        with pytest.raises(ShuttingDownError):
            await b.submit(images(99), 5)
        results = await asyncio.gather(*pending)
        await stopping
        return backend, results

    backend, results = run(main())
    assert sorted(x for batch in backend.batches for x in batch) == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert [r[0][0, 0] for r in results] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]


class ConcurrencyProbe(FakeBackend):
    """FakeBackend that records how many calls were inside it at once."""

    def __init__(self, delay_s: float = 0.0):
        super().__init__(delay_s)
        self.inside = 0
        self.most_inside = 0
        self._count = threading.Lock()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with self._count:
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
        try:
            return super().__call__(x)
        finally:
            with self._count:
                self.inside -= 1


@pytest.mark.parametrize("in_flight", [1, 2])
def test_batches_in_flight_bounds_concurrent_backend_calls(in_flight):
    computing = []

    async def main():
        backend = ConcurrencyProbe(delay_s=0.03)
        b = DynamicBatcher(backend, max_batch_size=2, max_wait_s=0.0, max_queue=100, batches_in_flight=in_flight,
                           on_computing=computing.append)
        b.start()
        results = await asyncio.gather(*[b.submit(images(i), 5) for i in range(12)])
        await b.stop()
        return backend, results

    backend, results = run(main())
    assert backend.most_inside == in_flight
    assert max(computing) == in_flight and computing[-1] == 0  # what the metric vitserve_batches_computing shows
    assert [r[0][0, 0] for r in results] == [float(i) for i in range(12)]  # every answer to its own image
    assert sorted(x for batch in backend.batches for x in batch) == [float(i) for i in range(12)]


def test_two_batches_compute_at_once():
    """With two batches in flight, a second batch enters the backend while the first is still inside it."""
    both_inside = threading.Barrier(2, timeout=5)

    def backend(x):
        both_inside.wait()  # breaks (BrokenBarrierError: the batch fails) unless another call comes in meanwhile
        return x[:, 0, 0, :1]

    async def main():
        b = DynamicBatcher(backend, max_batch_size=1, max_wait_s=0.0, max_queue=10, batches_in_flight=2)
        b.start()
        results = await asyncio.gather(b.submit(images(1), 10), b.submit(images(2), 10))
        await b.stop()
        return results

    assert [r[0][0, 0] for r in run(main())] == [1.0, 2.0]


def test_stop_closes_a_batch_waiting_for_more_images():
    """A batch held open for a request still decoding closes when the server stops (no image can join it now),
    and is computed: its request is answered, not failed or left to time out."""
    async def main():
        backend = FakeBackend()
        b = DynamicBatcher(backend, max_batch_size=8, max_wait_s=30.0, max_queue=100)
        b.start()
        with b.expecting():
            pending = asyncio.create_task(b.submit(images(7), 60))
            await asyncio.sleep(0.05)  # the batch holds image 7 and waits for the decoding request
            assert backend.batches == []
            await asyncio.wait_for(b.stop(drain_timeout_s=20), 10)  # not after the 30 s wait, nor the drain's 20
        return backend, await pending

    backend, (outputs, _) = run(main())
    assert backend.batches == [[7.0]] and outputs[0, 0] == 7.0


def test_drain_timeout_fails_the_computing_batch_at_once():
    """A batch still computing when the drain times out fails with ShuttingDownError, rather than leaving its
    requests to wait out their own timeout."""
    async def main():
        backend = FakeBackend()
        backend.gate.clear()  # the backend blocks until the gate opens
        b = DynamicBatcher(backend, max_batch_size=1, max_wait_s=0.0, max_queue=10)
        b.start()
        pending = asyncio.create_task(b.submit(images(3), 60))
        await asyncio.sleep(0.05)
        threading.Timer(0.5, backend.gate.set).start()  # lets the worker thread end, so stop() can return
        await b.stop(drain_timeout_s=0.1)
        with pytest.raises(ShuttingDownError, match="while this image computed"):
            await asyncio.wait_for(pending, 1)

    run(main())
