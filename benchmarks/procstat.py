"""Readings from ``/proc`` (Linux): a process's CPU time, resident memory, children, the machine.

CPU time is ``utime + stime`` from ``/proc/<pid>/stat`` (all threads of the
process, in clock ticks, usually 10 ms); memory is the resident set size from
``/proc/<pid>/statm``. Both are summed over a set of pids (nginx: master and
worker).
"""

from __future__ import annotations

import os
import platform
import resource
from dataclasses import dataclass
from pathlib import Path

from benchmarks.exceptions import BenchmarkError

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def _stat_fields(pid: int) -> list[str]:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError as error:
        raise BenchmarkError(f"cannot read /proc/{pid}/stat: {error}") from None
    # the command name (field 2) is in parentheses and may contain spaces
    return text[text.rindex(")") + 2 :].split()


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds used so far by the processes ``pids`` (summed)."""
    ticks = 0
    for pid in pids:
        fields = _stat_fields(pid)
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return ticks / CLOCK_TICKS


def cpu_split(pids: list[int]) -> tuple[float, float]:
    """(user, system) CPU seconds used so far by the processes ``pids`` (summed)."""
    user = system = 0
    for pid in pids:
        fields = _stat_fields(pid)
        user += int(fields[11])
        system += int(fields[12])
    return user / CLOCK_TICKS, system / CLOCK_TICKS


def rss_bytes(pids: list[int]) -> int:
    """Resident set size of the processes ``pids`` (summed), in bytes."""
    total = 0
    for pid in pids:
        try:
            resident = Path(f"/proc/{pid}/statm").read_text().split()[1]
        except OSError as error:
            raise BenchmarkError(f"cannot read /proc/{pid}/statm: {error}") from None
        total += int(resident) * PAGE_SIZE
    return total


def children(pid: int) -> list[int]:
    """The direct children of ``pid``."""
    found: list[int] = []
    task_dir = Path(f"/proc/{pid}/task")
    try:
        for task in task_dir.iterdir():
            text = (task / "children").read_text()
            found.extend(int(part) for part in text.split())
    except OSError as error:
        raise BenchmarkError(f"cannot list the children of {pid}: {error}") from None
    return sorted(set(found))


def machine_busy_seconds() -> float:
    """CPU seconds all CPUs of the machine have been busy (``/proc/stat``: not idle/iowait)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def own_cpu_seconds() -> float:
    """CPU seconds of this process and of its waited-for descendants."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def load_average() -> tuple[float, float, float]:
    """The 1, 5 and 15 minute load averages."""
    one, five, fifteen = os.getloadavg()
    return one, five, fifteen


@dataclass(frozen=True)
class Machine:
    """What the benchmark ran on."""

    cpu_model: str = "unknown"
    """``model name`` from ``/proc/cpuinfo``."""
    cores: int = 1
    """Logical CPUs available to this process."""
    memory_gib: float = 0.0
    """``MemTotal`` in GiB."""
    kernel: str = ""
    """``uname -r``."""
    python: str = ""
    """Python version of the harness (and of the sidecar, same venv)."""

    def describe(self) -> str:
        """One line for the report."""
        return (
            f"{self.cpu_model}, {self.cores} logical CPUs, {self.memory_gib:.1f} GiB RAM, "
            f"Linux {self.kernel}, Python {self.python}"
        )


def machine() -> Machine:
    """Describe this machine."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        memory_kib = 0
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_kib = int(line.split()[1])
                break
    except OSError:
        memory_kib = 0
    return Machine(
        cpu_model=model,
        cores=len(os.sched_getaffinity(0)),
        memory_gib=memory_kib / 1024 / 1024,
        kernel=platform.release(),
        python=platform.python_version(),
    )
