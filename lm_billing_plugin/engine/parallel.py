"""The engine's pool of network workers: run one fetch per server in parallel, each within its
own deadline, and hand each result back to the calling thread (which owns the database).

Validation batches (batches.py) and the bill run's usage reads (billing/usage.py) share it, so
parallelism, deadlines and the overrun guard behave the same for both.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Final, TypeVar

__all__ = ["GRACE", "run_parallel"]

T = TypeVar("T")
R = TypeVar("R")
O = TypeVar("O")  # noqa: E741 - the outcome type

# How long past its own deadline a worker may take before the runner stops waiting for it
# (the client's deadline normally ends it first; this only guards against surprises).
GRACE: Final = 5.0


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
    a ``time.monotonic()`` deadline (no database there). ``finish(item, future)`` turns a
    done fetch into an outcome in the calling thread; ``overran(item)`` does so for a fetch
    that outlived its deadline by :data:`GRACE` (the runner stops waiting for it).
    """
    outcomes: list[O] = []
    pending = list(reversed(items))
    running: dict[Future[R], tuple[T, float]] = {}
    size = max(1, min(workers, len(items)))
    pool = ThreadPoolExecutor(max_workers=size, thread_name_prefix=thread_name_prefix)
    try:
        while pending or running:
            while pending and len(running) < size:
                item = pending.pop()
                early = start(item)
                if early is not None:
                    outcomes.append(early)
                    continue
                deadline = time.monotonic() + deadline_seconds
                running[pool.submit(fetch, item, deadline)] = (item, deadline)
            if not running:
                continue
            soonest = min(d for _t, d in running.values()) + GRACE
            done, _ = wait(list(running), timeout=max(0.0, soonest - time.monotonic()),
                           return_when=FIRST_COMPLETED)
            for fut in done:
                item, _deadline = running.pop(fut)
                outcomes.append(finish(item, fut))
            for fut, (item, deadline) in list(running.items()):
                if fut not in done and time.monotonic() > deadline + GRACE:
                    running.pop(fut)
                    outcomes.append(overran(item))
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return outcomes
