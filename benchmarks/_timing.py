"""The warm-up-then-time loop the throughput benchmarks share."""

from __future__ import annotations

import time
from collections.abc import Callable


def items_per_s(step: Callable[[], None], items: int, reps: int, warmup: int = 2) -> float:
    """``items`` per call of ``step``, divided by the mean time of ``reps`` calls.

    The ``warmup`` calls first are not timed: they pay for oneDNN's kernel selection and
    the allocator's first requests, which a long run pays once.
    """
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(reps):
        step()
    return items * reps / (time.perf_counter() - start)
