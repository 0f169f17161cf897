"""The process tree as Linux's ``/proc`` shows it, for the tests that start, watch and kill drivers,
Ray nodes and trial workers (test_distributed, test_chaos, test_locks)."""

from __future__ import annotations

import os
from pathlib import Path


def _stat_fields(pid: int | str) -> list[str]:
    """The fields of ``/proc/<pid>/stat`` after ``pid (comm)`` (comm may hold spaces and parentheses)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def parents() -> dict[int, int]:
    """pid -> parent pid of every process."""
    out = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                out[int(entry.name)] = int(_stat_fields(entry.name)[1])
            except (OSError, IndexError, ValueError):
                continue
    return out


def parent(pid: int | None) -> int | None:
    try:
        return int(_stat_fields(pid)[1])
    except (OSError, IndexError, ValueError):
        return None


def descendants(root: int, tree: dict[int, int] | None = None) -> set[int]:
    tree = parents() if tree is None else tree
    children: dict[int, list[int]] = {}
    for pid, ppid in tree.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = set(), [root]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in found:
                found.add(c)
                todo.append(c)
    return found


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def alive(pid: int) -> bool:
    """Running, not a zombie (a container's init may never reap the orphans it inherits)."""
    try:
        return _stat_fields(pid)[0] != "Z"
    except (OSError, IndexError):
        return False


def uptime() -> float:
    """Seconds since the machine booted (the clock of :func:`started`)."""
    return float(Path("/proc/uptime").read_text().split()[0])


def started(pid: int) -> float | None:
    """When ``pid`` started, in seconds since the machine booted (None when it is gone)."""
    try:
        return int(_stat_fields(pid)[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None
