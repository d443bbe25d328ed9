"""Process memory from /proc (Linux), shared by the memory benchmarks.

``status("VmRSS")`` / ``status("VmHWM")``: current and peak resident set size in bytes;
``reset_hwm()`` resets the peak (``/proc/self/clear_refs``) so it covers what follows;
``maxrss()``: ``getrusage``'s high-water mark of the whole process, in bytes.
"""

from __future__ import annotations

import resource

__all__ = ["maxrss", "reset_hwm", "status"]


def status(key: str) -> int:
    """A ``/proc/self/status`` size field (e.g. ``VmRSS``) in bytes; 0 if absent."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def reset_hwm() -> bool:
    """Reset the RSS high-water mark (VmHWM); False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def maxrss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
