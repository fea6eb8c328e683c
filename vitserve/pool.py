"""Objects made on demand and reused, one per concurrent user: an OpenVINO infer request, a CUDA graph's pinned
staging buffers. The pool grows to the largest number of calls that ever ran at once, and no further."""

from __future__ import annotations

import contextlib
import queue
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Pool(Generic[T]):
    def __init__(self, make: Callable[[], T]):
        self._make = make
        self._idle: queue.SimpleQueue[T] = queue.SimpleQueue()

    def add(self, item: T) -> None:
        self._idle.put(item)

    @contextlib.contextmanager
    def take(self) -> Iterator[T]:
        """An idle object, or a new one when every one is in use; back to the pool afterwards."""
        try:
            item = self._idle.get_nowait()
        except queue.Empty:
            item = self._make()
        try:
            yield item
        finally:
            self._idle.put(item)
