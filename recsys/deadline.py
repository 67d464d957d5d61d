"""Request deadlines, cooperative cancellation of stage work, and accounting of the work still running.

A :class:`Deadline` is a request's time budget and each stage's share of it. When :meth:`Engine.rank
<recsys.engine.Engine.rank>` runs a stage under a deadline it opens a :class:`StageRun` for it (expiring at the
stage's budget) and makes it the *current* run of the worker thread executing the stage. The stage code calls
:func:`checkpoint` between its steps (feature groups, model batches, candidate sources); once the run has
expired or was cancelled (the engine stopped waiting for it, or the service gave up on the request:
:meth:`Deadline.cancel`) the checkpoint raises :class:`Cancelled` and the stage stops there instead of running
on in the shared pool. Without a current run (offline evaluation, training) :func:`checkpoint` does nothing,
so the same stage code serves both.

Work accounting: ``Deadline.holder`` (optional) is anything with ``retain()`` / ``release()`` (the service's
admission :class:`~serving.admission.Ticket`). Every stage call submitted under the deadline retains it and
releases it when the call has actually finished (or was cancelled before it started), so the holder counts
work that is running, not requests that are waiting for an answer.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import threading
import time
from typing import Any, Callable


class DeadlineExceeded(RuntimeError):
    """Nothing could be returned within the request's budget (the service maps this to 504)."""


class Cancelled(Exception):
    """Raised by :func:`checkpoint` in a stage whose run expired or was cancelled (the result is not wanted)."""


_local = threading.local()


def checkpoint() -> None:
    """Stop the current stage (raise :class:`Cancelled`) when its run expired or was cancelled; a no-op outside
    a deadline. Cheap (a thread-local read and a clock read): call it between the steps of a stage."""
    run = getattr(_local, "run", None)
    if run is not None:
        run.check()


@dataclasses.dataclass
class Deadline:
    """A request's time budget and each stage's share of it.

    ``budget(stage) = min(remaining, share[stage] * total)`` seconds; stages without a share may use all that
    remains. ``start`` is a ``time.perf_counter()`` reading (default: now). ``holder``: see the module docstring.
    """

    total_s: float
    shares: dict[str, float] = dataclasses.field(default_factory=dict)
    start: float = dataclasses.field(default_factory=time.perf_counter)
    holder: Any = None
    _cancelled: threading.Event = dataclasses.field(default_factory=threading.Event, repr=False, compare=False)

    def remaining(self) -> float:
        return self.total_s - (time.perf_counter() - self.start)

    def budget(self, stage: str) -> float:
        rem = self.remaining()
        share = self.shares.get(stage)
        return rem if share is None else min(rem, share * self.total_s)

    def cancel(self) -> None:
        """Give up on the request: every stage run of it stops at its next checkpoint; no new one starts."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def submit(self, executor: concurrent.futures.Executor, budget_s: float, fn: Callable, *args: Any
               ) -> tuple["StageRun", concurrent.futures.Future]:
        """Run ``fn(*args)`` on ``executor`` as a :class:`StageRun` expiring in ``budget_s`` seconds; the holder
        is retained until the call is over (finished, failed, or cancelled before it started)."""
        run = StageRun(self, time.perf_counter() + budget_s)
        holder = self.holder
        if holder is not None:
            holder.retain()
        try:
            future = executor.submit(run.call, fn, *args)
        except BaseException:
            if holder is not None:
                holder.release()
            raise
        if holder is not None:
            future.add_done_callback(lambda _f: holder.release())
        return run, future


class StageRun:
    """One stage call under a deadline: expires at ``expires_at`` (perf_counter seconds) or when cancelled."""

    __slots__ = ("deadline", "expires_at", "_cancelled")

    def __init__(self, deadline: Deadline, expires_at: float) -> None:
        self.deadline, self.expires_at, self._cancelled = deadline, expires_at, False

    def cancel(self) -> None:
        self._cancelled = True

    def check(self) -> None:
        if self._cancelled or self.deadline.cancelled or time.perf_counter() > self.expires_at:
            raise Cancelled("the stage's deadline passed; its result is no longer wanted")

    def call(self, fn: Callable, *args: Any) -> Any:
        """``fn(*args)`` with this run as the thread's current one (for :func:`checkpoint`)."""
        self.check()  # cancelled or expired while queued: do not start
        prev = getattr(_local, "run", None)
        _local.run = self
        try:
            return fn(*args)
        finally:
            _local.run = prev
