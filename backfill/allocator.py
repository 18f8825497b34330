"""glibc's allocator set for a process that streams large buffers: fixed thresholds.

The engine allocates and frees buffers of a mebibyte or more over and over (inflated pieces,
their lines, request bodies). With glibc's dynamic defaults many of them are mapped and
unmapped, or the heap's top is trimmed and grown again, and the kernel then faults in and
zeroes every page anew: most of a load's system time (1.2 s of 2,000,000 records' 7 s of
CPU). Fixed thresholds keep freed memory in the heap for the next buffer. Measured by
`python -m benchmarks.breakdown` (see README, Benchmarks); peak RSS is unchanged.
"""

from __future__ import annotations

import ctypes
from typing import Final

M_TRIM_THRESHOLD: Final = -1  # from glibc's malloc.h
M_MMAP_THRESHOLD: Final = -3
MMAP_THRESHOLD: Final = 32 << 20  # a buffer this large (never, by default) gets its own map
TRIM_THRESHOLD: Final = 128 << 20  # free memory kept at the heap's top before giving it back


def tune() -> bool:
    """True where glibc took the setting; elsewhere (musl, macOS) nothing changes."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    mapped = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    return bool(mapped and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
