"""What every bench section shares: the repository root, tables, timing and peak-RSS sampling."""


from __future__ import annotations

import ctypes
import gc
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[2]
MMAP_THRESHOLD = 1 << 20


def table(header: list[str], rows: list[list[Any]]) -> str:
    cells = [header, *[[f"{c:.4g}" if isinstance(c, float) else str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@contextmanager
def peak_rss_delta(interval_s: float = 0.0005) -> Iterator[dict[str, int]]:
    """Peak RSS above the RSS at entry, sampled by a background thread (torch ops release the GIL).

    CPU torch has no allocator statistics, so this is the honest measurement available: it sees
    every page touched, including the gradient buffers, and may miss a spike shorter than a sample.
    peak_private_delta leaves out shared pages (RSS - shared: on Linux, file and shared-memory
    pages such as the Ray object store's, which a process writing into it touches).
    """
    gc.collect()
    with suppress(OSError, AttributeError):  # return freed heap pages so they do not sit in the baseline
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    proc = psutil.Process()
    first = proc.memory_info()
    result = {"baseline": first.rss, "peak_delta": 0, "peak_private_delta": 0}
    private_baseline = first.rss - getattr(first, "shared", 0)
    done = threading.Event()

    def sample() -> None:
        mem = proc.memory_info()
        result["peak_delta"] = max(result["peak_delta"], mem.rss - result["baseline"])
        private = mem.rss - getattr(mem, "shared", 0) - private_baseline
        result["peak_private_delta"] = max(result["peak_private_delta"], private)

    def sampler() -> None:
        while not done.is_set():
            sample()
            time.sleep(interval_s)

    thread = threading.Thread(target=sampler, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        done.set()
        thread.join()
        sample()


# ---- 1. chunked entropy vs naive float32 ------------------------------------------------------
