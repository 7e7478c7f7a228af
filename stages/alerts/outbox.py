"""A sink's bounded queue: the alerts stage's subscriber loop only ever appends (never waits), the
sink's own thread takes. When the queue is full the oldest alert goes and is counted: an operator
wants the newest alert, and a sink that has been away that long is told how much it missed."""
from __future__ import annotations

import threading
import time
from collections import deque


class Outbox:
    def __init__(self, capacity: int):
        self.items: deque = deque()
        self.capacity = capacity
        self.cond = threading.Condition()
        self.dropped = 0  # pushed out by newer alerts while the queue was full
        self.closed = False

    def put(self, item) -> None:
        with self.cond:
            if len(self.items) >= self.capacity:
                self.items.popleft()
                self.dropped += 1
            self.items.append(item)
            self.cond.notify()

    def take(self, timeout_s: float):
        """The oldest item, or None after ``timeout_s`` or once closed and empty."""
        deadline = time.monotonic() + timeout_s
        with self.cond:
            while not self.items and not self.closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)
            return self.items.popleft() if self.items else None

    def put_back(self, item) -> None:
        """An item whose delivery is to be retried goes first again (unless newer ones filled the queue)."""
        with self.cond:
            if len(self.items) >= self.capacity:
                self.dropped += 1
                return
            self.items.appendleft(item)

    def close(self) -> list:
        """No more takes; the items still queued (undelivered) are returned."""
        with self.cond:
            self.closed = True
            left, self.items = list(self.items), deque()
            self.cond.notify_all()
            return left

    def __len__(self) -> int:
        with self.cond:
            return len(self.items)
