"""The engine's pool of network workers: run one fetch per server in parallel, each within its
own deadline, and hand each result back to the calling thread (which owns the database).

Validation batches (batches.py) and the bill run's usage reads (billing/usage.py) share it, so
parallelism, deadlines and the overrun guard behave the same for both.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Final, TypeVar

__all__ = ["GRACE", "handed_ahead", "run_parallel"]

T = TypeVar("T")
R = TypeVar("R")
O = TypeVar("O")  # noqa: E741 - the outcome type

# How long past its own deadline a worker may take before the runner stops waiting for it
# (the client's deadline normally ends it first; this only guards against surprises).
GRACE: Final = 5.0


def handed_ahead(workers: int, items: int) -> int:
    """How many items :func:`run_parallel` starts before the first fetch is done: twice the
    workers it uses (so a caller may prepare them together)."""
    return 2 * max(1, min(workers, items))


def run_parallel(
    items: Sequence[T],
    fetch: Callable[[T, float], R],
    *,
    workers: int,
    deadline_seconds: float,
    start: Callable[[T], O | None],
    finish: Callable[[T, Future[R]], O],
    overran: Callable[[T], O],
    thread_name_prefix: str = "lm-billing-fetch",
) -> list[O]:
    """Fetch every item with at most ``workers`` at once; return one outcome per item.

    ``start(item)`` runs in the calling thread before the fetch; an outcome it returns is
    kept and the item is not fetched. ``fetch(item, deadline)`` runs in a worker thread with
    a ``time.monotonic()`` deadline counted from when that worker really began (no database
    there). ``finish(item, future)`` turns a done fetch into an outcome in the calling thread;
    ``overran(item)`` does so for a fetch that outlived its deadline by :data:`GRACE` (the
    runner stops waiting for it).

    Up to twice ``workers`` items are handed to the pool ahead, so while the calling thread
    is busy in ``finish`` (storing one server) the workers go on fetching the next ones; the
    results waiting for it stay bounded by that number, not by the fleet.
    """
    outcomes: list[O] = []
    pending = collections.deque(items)
    # Each submitted item with the moment its worker began (empty until then).
    running: dict[Future[R], tuple[T, list[float]]] = {}
    size = max(1, min(workers, len(items)))
    ahead = handed_ahead(workers, len(items))
    pool = ThreadPoolExecutor(max_workers=size, thread_name_prefix=thread_name_prefix)

    def timed(item: T, began: list[float]) -> R:
        began.append(time.monotonic())
        return fetch(item, began[0] + deadline_seconds)

    def refill() -> None:
        while pending and len(running) < ahead:
            item = pending.popleft()
            early = start(item)
            if early is not None:
                outcomes.append(early)
                continue
            began: list[float] = []
            running[pool.submit(timed, item, began)] = (item, began)

    try:
        refill()
        while running:
            now = time.monotonic()
            starts = [began[0] for _item, began in running.values() if began]
            soonest = (min(starts) if starts else now) + deadline_seconds + GRACE
            done, _ = wait(list(running), timeout=max(0.0, soonest - now),
                           return_when=FIRST_COMPLETED)
            for fut in done:
                item, _began = running.pop(fut)
                outcomes.append(finish(item, fut))
                refill()
            now = time.monotonic()
            for fut, (item, began) in list(running.items()):
                if began and now > began[0] + deadline_seconds + GRACE:
                    running.pop(fut)
                    outcomes.append(overran(item))
            refill()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return outcomes
