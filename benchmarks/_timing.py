"""The one timing rule every benchmark uses: best and median of a few repeats (a shared
machine only ever adds time, so the best is the least noisy estimate)."""

from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from typing import Callable, Iterator

from moca import safety


def rate(fn: Callable[[], object], count: int, repeats: int, unit: str) -> dict[str, float]:
    """``count`` operations per call of ``fn``: ``{unit}_per_s`` (best) and ``median_{unit}_per_s``."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return {f"{unit}_per_s": count / min(times), f"median_{unit}_per_s": count / statistics.median(times)}


@contextmanager
def through_daqp_solve() -> Iterator[None]:
    """Within: every deployment projection solves through daqp.solve (DAQP's Python wrapper)
    instead of calling DAQP's C solver directly, the path moca takes where it cannot."""
    direct, safety._DIRECT = safety._DIRECT, None
    try:
        yield
    finally:
        safety._DIRECT = direct
