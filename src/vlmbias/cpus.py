"""How many CPUs this process may use, and what `snakemake --cores N` may mean on this machine."""
from __future__ import annotations

import math
import os
from pathlib import Path


def usable_cpus(cgroup: str | Path = "/sys/fs/cgroup/cpu.max") -> int:
    """CPUs this process may run on: its affinity mask (taskset, a SLURM allocation's cpuset), further
    limited by a cgroup v2 CPU quota (a container's `--cpus`) when one is set."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity API (macOS, Windows)
        n = os.cpu_count() or 1
    try:
        quota, period = Path(cgroup).read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass  # no cgroup v2 quota readable: the affinity mask is the limit
    return max(1, n)


def local_cores(asked: int | None, available: int | None = None) -> int | None:
    """The cores a local run schedules on: `asked`, but never more than the machine has. Asking for
    more would start several multi-threaded torch jobs on the same cores: each runs slower than
    alone and the run as a whole slower than with the true count."""
    if asked is None:
        return None
    return min(asked, usable_cpus() if available is None else available)
