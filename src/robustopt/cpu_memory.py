"""Keep freed tensor memory in the process on Linux/glibc instead of returning it to the OS.

By default glibc serves blocks above a (dynamic) threshold with fresh ``mmap`` pages and
returns freed heap memory to the system, so every forward/backward pass of a small model
on the CPU page-faults its activations in again. Measured on this project's 2-core CPU
(``benchmarks/attack_throughput.py --models small-mnist --malloc default|tuned``,
``results/attack_throughput_malloc_*.txt``): float32 PGD on the small MNIST CNN ran 9-15%
faster for our attack, torchattacks and a hand loop alike. The
command-line program calls :func:`keep_freed_memory` once at start; library users may
call it themselves (it changes the whole process's allocator, so the library never
does it on import).
"""

from __future__ import annotations

import platform
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024   # glibc's largest allowed value on 64-bit systems
TRIM_THRESHOLD = 1024 * 1024 * 1024  # free memory kept at the heap top before trimming


def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds for tensor workloads; True if applied.

    A no-op returning False where the C library is not glibc (macOS, Windows, musl).
    The cost: the process keeps up to 1 GiB of freed memory for reuse. (With another
    allocator preloaded, e.g. jemalloc, this tunes glibc's unused one: harmless.)
    """
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    import ctypes  # only where it is used

    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
