"""What a process costs, read from /proc: CPU seconds (all threads) and resident memory."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class Usage:
    #: utime + stime of every thread, in seconds.
    cpu_seconds: float
    rss_bytes: int
    #: Of `cpu_seconds`, the part spent in the kernel (system calls, page faults) for it.
    kernel_seconds: float = 0.0
    #: Pages first touched (minor faults), each a trip to the kernel: dear on a virtual machine.
    page_faults: int = 0


def usage(pid: int) -> Usage:
    # The command name may hold spaces and parentheses; the fields start after the last ")".
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    # Fields 14 and 15 of proc(5) (utime, stime) are 11 and 12 once pid and comm are dropped.
    cpu = (int(fields[11]) + int(fields[12])) / TICKS
    rss_pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    # Field 10 (minflt) is 7.
    return Usage(
        cpu_seconds=cpu,
        rss_bytes=rss_pages * PAGE,
        kernel_seconds=int(fields[12]) / TICKS,
        page_faults=int(fields[7]),
    )


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of each live thread of `pid`, by thread id; the main thread's id is `pid`."""
    found = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue  # the thread ended meanwhile
        found[int(task.name)] = (int(fields[11]) + int(fields[12])) / TICKS
    return found
