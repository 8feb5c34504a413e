"""Facts about the machine at hand that timings and caches are keyed by (no torch here)."""

from __future__ import annotations

import platform


def cpu_name(default: str = "unknown cpu") -> str:
    """The CPU's model name (``/proc/cpuinfo``, else ``platform``), or ``default``."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or default
