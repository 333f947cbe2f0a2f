"""A bounded drop-oldest buffer between producers that must never wait (the inference thread)
and one consumer thread (the event store's writer, a sink's sender).

Items get increasing sequence numbers. The consumer ``peek``s a batch, tries to deliver it and
``ack``s it only once delivered, so a failed delivery is retried with the same items; while it
fails, new items keep arriving and, beyond ``capacity``, the oldest are dropped (and counted) --
the batch in flight included. Memory is bounded by ``capacity`` items whatever happens
downstream.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable
from typing import Generic, TypeVar

T = TypeVar("T")


class DropOldest(Generic[T]):
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: deque[tuple[int, T]] = deque()
        self._next = 0
        self._cond = threading.Condition()
        self._closed = False
        self.accepted = 0
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._items)

    def put(self, items: Iterable[T]) -> None:
        """Append without ever waiting; beyond capacity the oldest items go (counted)."""
        with self._cond:
            for item in items:
                self._items.append((self._next, item))
                self._next += 1
                self.accepted += 1
            excess = len(self._items) - self.capacity
            for _ in range(max(0, excess)):
                self._items.popleft()
            self.dropped += max(0, excess)
            self._cond.notify()

    def peek(self, n: int, timeout: float) -> list[tuple[int, T]]:
        """Up to ``n`` of the oldest items with their sequence numbers, waiting up to ``timeout``
        seconds for the first one (empty on timeout or after :meth:`close`)."""
        with self._cond:
            if not self._items and not self._closed:
                self._cond.wait(timeout)
            return [self._items[i] for i in range(min(n, len(self._items)))]

    def ack(self, upto: int) -> None:
        """The items up to sequence number ``upto`` were delivered: forget them."""
        with self._cond:
            while self._items and self._items[0][0] <= upto:
                self._items.popleft()

    def take(self, n: int, timeout: float) -> list[T]:
        """:meth:`peek` and :meth:`ack` at once (for a consumer that cannot fail)."""
        batch = self.peek(n, timeout)
        if batch:
            self.ack(batch[-1][0])
        return [item for _, item in batch]

    def wait_for_more(self, have: int, timeout: float) -> None:
        """Wait up to ``timeout`` until more than ``have`` items are buffered (or closed)."""
        with self._cond:
            if len(self._items) <= have and not self._closed:
                self._cond.wait(timeout)

    def close(self) -> None:
        """Wake the consumer for good (it drains what is left and stops)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed
