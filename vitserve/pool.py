"""Objects made on demand and reused, one per concurrent user: an OpenVINO infer request, a CUDA graph's pinned
staging buffers. The pool grows to the largest number of calls that ever ran at once, or that it was reserved for,
and no further."""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Pool(Generic[T]):
    def __init__(self, make: Callable[[], T]):
        self._make = make
        self._idle: queue.SimpleQueue[T] = queue.SimpleQueue()
        self._count_lock = threading.Lock()
        self.size = 0  # objects made so far

    def _new(self) -> T:
        item = self._make()
        with self._count_lock:
            self.size += 1
        return item

    def reserve(self, users: int) -> None:
        """Makes objects until there are enough for `users` at once, so that none is made while serving."""
        while self.size < users:
            self._idle.put(self._new())

    @contextlib.contextmanager
    def take(self) -> Iterator[T]:
        """An idle object, or a new one when every one is in use; back to the pool afterwards."""
        try:
            item = self._idle.get_nowait()
        except queue.Empty:
            item = self._new()
        try:
            yield item
        finally:
            self._idle.put(item)
