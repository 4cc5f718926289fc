"""How many CPU threads the kernels use.

The default is the number of CPUs this process may run on: its affinity mask, further limited
by a cgroup CPU quota (containers), or ``CSI_NUM_THREADS`` when set.
"""

from __future__ import annotations

import math
import os
import threading

_lock = threading.Lock()
_override: int | None = None


def _cgroup_cpu_limit() -> int | None:
    try:
        with open("/sys/fs/cgroup/cpu.max") as fh:
            quota, period = fh.read().split()[:2]
        if quota == "max":
            return None
        return max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        return None


def default_threads() -> int:
    """Threads a top-k call uses when ``threads`` is not given."""
    with _lock:
        if _override is not None:
            return _override
    env = os.environ.get("CSI_NUM_THREADS")
    if env:
        try:
            value = int(env)
        except ValueError:
            value = 0
        if value >= 1:
            return value
        raise ValueError(f"CSI_NUM_THREADS must be a positive integer (got {env!r})")
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    limit = _cgroup_cpu_limit()
    return max(1, min(cpus, limit) if limit else cpus)


def set_num_threads(n: int | None) -> None:
    """Sets the process-wide default thread count (``None`` restores the automatic choice)."""
    global _override
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        raise ValueError(f"thread count must be a positive integer or None (got {n!r})")
    with _lock:
        _override = n
