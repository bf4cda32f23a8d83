"""glibc's malloc told to keep freed memory for reuse instead of returning it.

The agent's large objects come and go by the hundred kilobytes: a Metrics
line of 10,000 points is a 280 KB message, encoded into a fresh buffer, held
until Kafka acknowledges it, then freed. By default glibc hands such memory
back to the kernel as soon as the top of a heap is free (its trim threshold
follows the largest block freed so far), so the next message faults its
pages in again: about a fifth of a Metrics line's ingest CPU here
(bench/agent_ingest.py). Keeping up to `keep_bytes` of freed memory per
heap makes the next message reuse warm pages. The price is resident memory
that stays after a burst, at most `keep_bytes` per malloc arena that saw
large blocks; an idle agent never grows that far.
"""

from __future__ import annotations

import ctypes
import platform

import structlog

__all__ = ["keep_freed_memory"]

log = structlog.get_logger("traintrail.memory")

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Blocks from this size on get their own mapping, returned when freed: far
# above a message, so the agent's blocks all come from the heaps.
_MMAP_THRESHOLD = 32 * 1024 * 1024


def keep_freed_memory(keep_bytes: int) -> bool:
    """Keep up to `keep_bytes` of freed memory per heap (0: glibc's defaults,
    left alone). True when applied; False where the C library is not glibc."""
    if keep_bytes <= 0:
        return False
    if platform.libc_ver()[0] != "glibc":
        log.info("not glibc: malloc left as it is", libc=platform.libc_ver()[0] or "unknown")
        return False
    libc = ctypes.CDLL(None)
    mallopt = libc.mallopt
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    keep = min(keep_bytes, 2**31 - 1)
    # Setting either turns glibc's dynamic thresholds off for both.
    ok = mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD) == 1
    ok = mallopt(_M_TRIM_THRESHOLD, keep) == 1 and ok
    if not ok:
        log.warning("mallopt refused the settings; malloc left as it is")
    return bool(ok)
