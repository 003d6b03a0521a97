"""What the benchmarks read of their own process: its peak resident memory."""

from __future__ import annotations

import resource

__all__ = ["peak_rss_mib"]


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, MiB.

    Linux's ``getrusage`` maximum survives ``exec``: a child started by a parent holding a large
    table would report the parent's size. /proc/self/status's VmHWM belongs to this process's
    own address space, so it is read where it exists.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
