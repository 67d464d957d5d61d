"""Admission control: at most ``limit`` rank requests in flight; the next one is refused at once (no queue).

A :class:`Ticket` is taken when a request arrives and released when the *last* holder lets go: the HTTP
layer holds it for the request's lifetime and the engine worker holds it until ``Engine.rank`` has returned.
So a request answered 504 while its engine call still runs keeps its slot until the CPU work is over:
the bound is on work in progress, not on open connections.

Thread-safe (tickets are released from worker threads).
"""

from __future__ import annotations

import threading
from typing import Callable


class Ticket:
    """One admitted request; released to its limiter when every holder has called :meth:`release`."""

    __slots__ = ("_limiter", "_holders", "_lock")

    def __init__(self, limiter: "Limiter") -> None:
        self._limiter = limiter
        self._holders = 1
        self._lock = threading.Lock()

    def retain(self) -> None:
        with self._lock:
            assert self._holders > 0, "retain() after the ticket was released"
            self._holders += 1

    def release(self) -> None:
        with self._lock:
            assert self._holders > 0, "ticket released more times than retained"
            self._holders -= 1
            last = self._holders == 0
        if last:
            self._limiter._release()


class Limiter:
    """A non-blocking counting semaphore; ``on_change(n)`` is called with the new in-flight count."""

    def __init__(self, limit: int, on_change: Callable[[int], None] | None = None) -> None:
        if limit < 1:
            raise ValueError(f"Limiter: limit must be >= 1, got {limit}")
        self.limit = limit
        self._n = 0
        self._lock = threading.Lock()
        self._on_change = on_change

    @property
    def inflight(self) -> int:
        return self._n

    def try_acquire(self) -> Ticket | None:
        """A ticket, or None when ``limit`` tickets are out."""
        with self._lock:
            if self._n >= self.limit:
                return None
            self._n += 1
            if self._on_change:  # under the lock, so updates are never applied out of order
                self._on_change(self._n)
        return Ticket(self)

    def _release(self) -> None:
        with self._lock:
            assert self._n > 0
            self._n -= 1
            if self._on_change:
                self._on_change(self._n)
