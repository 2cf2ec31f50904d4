"""Resource use of a kernel's whole process tree: the kernel and all descendants.

Linux reports voluntary context switches per thread (a process's own
counters are those of its main thread only), so wake-ups are summed over
`/proc/<pid>/task/*`. CPU time is summed per thread too, from `schedstat`
(nanoseconds), because psutil's per-process times tick in 10 ms steps, too
coarse for an idle window; psutil's times are the fallback where `schedstat`
is missing. A thread or process that exits between two snapshots takes its
counts since the first one with it; one that appears counts in full, since all
of its life lies inside the window.
"""

from __future__ import annotations

from dataclasses import dataclass

import psutil

__all__ = [
    "MemoryReading",
    "TreeSnapshot",
    "TreeUsage",
    "describe_tree",
    "snapshot",
    "tree_memory",
    "usage_between",
]

ThreadKey = tuple[int, int]  # (pid, tid)


@dataclass(frozen=True)
class TreeSnapshot:
    """Counters of every process and thread in a tree at one moment."""

    cpu: dict[int, float]  # pid -> user + system seconds (psutil, 10 ms ticks)
    run_ns: dict[ThreadKey, int]  # on-CPU time from schedstat; {} if unreadable
    voluntary: dict[ThreadKey, int]
    involuntary: dict[ThreadKey, int]
    names: dict[ThreadKey, str]  # thread name from /proc (comm), for reports


@dataclass(frozen=True)
class TreeUsage:
    """What a tree consumed between two snapshots."""

    cpu_seconds: float
    voluntary: int  # wake-ups: the thread blocked and was woken again
    involuntary: int  # preemptions
    processes: int  # in the later snapshot
    threads: int  # in the later snapshot
    busiest: tuple[tuple[str, int], ...]  # (thread label, wake-ups), most first


@dataclass(frozen=True)
class MemoryReading:
    """Memory of a tree; `kind` is "PSS", or "RSS" where PSS cannot be read."""

    total_bytes: int
    processes: int
    kind: str


def tree(pid: int) -> list[psutil.Process]:
    """The process `pid` and its live descendants; raises if `pid` itself is gone."""
    root = psutil.Process(pid)
    try:
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return [root]


def snapshot(pid: int) -> TreeSnapshot:
    """Read CPU time per process and context switches per thread of `pid`'s tree."""
    cpu: dict[int, float] = {}
    run_ns: dict[ThreadKey, int] = {}
    voluntary: dict[ThreadKey, int] = {}
    involuntary: dict[ThreadKey, int] = {}
    names: dict[ThreadKey, str] = {}
    for process in tree(pid):
        try:
            times = process.cpu_times()
            cpu[process.pid] = times.user + times.system
            threads = process.threads()
        except psutil.NoSuchProcess:
            # It exited while being read; the next snapshot will not have it either.
            continue
        for thread in threads:
            key = (process.pid, thread.id)
            try:
                switches = psutil.Process(thread.id).num_ctx_switches()
            except psutil.NoSuchProcess:
                # The thread ended just now; see the module note on exits.
                continue
            voluntary[key] = switches.voluntary
            involuntary[key] = switches.involuntary
            names[key] = _thread_name(process.pid, thread.id)
            ran = _run_ns(process.pid, thread.id)
            if ran is not None:
                run_ns[key] = ran
    return TreeSnapshot(cpu, run_ns, voluntary, involuntary, names)


def usage_between(before: TreeSnapshot, after: TreeSnapshot) -> TreeUsage:
    """The difference `after - before`, counted as the module docstring says."""
    if after.run_ns and set(after.run_ns) == set(after.voluntary):
        ran = sum(ns - before.run_ns.get(key, 0) for key, ns in after.run_ns.items())
        cpu = ran / 1e9
    else:
        cpu = sum(value - before.cpu.get(pid, 0.0) for pid, value in after.cpu.items())
    wakeups = {
        key: value - before.voluntary.get(key, 0)
        for key, value in after.voluntary.items()
    }
    preempted = sum(
        value - before.involuntary.get(key, 0)
        for key, value in after.involuntary.items()
    )
    ranked = sorted(wakeups.items(), key=lambda item: item[1], reverse=True)
    busiest = tuple(
        (f"{key[0]}/{key[1]} {after.names.get(key, '?')}", count)
        for key, count in ranked[:5]
        if count > 0
    )
    return TreeUsage(
        cpu_seconds=cpu,
        voluntary=sum(wakeups.values()),
        involuntary=preempted,
        processes=len(after.cpu),
        threads=len(after.voluntary),
        busiest=busiest,
    )


def tree_memory(pid: int) -> MemoryReading:
    """Sum PSS over `pid`'s tree, falling back to RSS if smaps cannot be read."""
    total = 0
    count = 0
    kind = "PSS"
    for process in tree(pid):
        try:
            try:
                total += process.memory_full_info().pss
            except (psutil.AccessDenied, AttributeError):
                kind = "RSS"
                total += process.memory_info().rss
            count += 1
        except psutil.NoSuchProcess:
            # Gone since the tree was listed; it holds no memory any more.
            continue
    return MemoryReading(total, count, kind)


def describe_tree(pid: int) -> str:
    """The tree's processes as `pid program [<parent]` items, the kernel first."""
    items = []
    for process in tree(pid):
        try:
            parent = "" if process.pid == pid else f" <{process.ppid()}"
            items.append(f"{process.pid} {_program(process.cmdline())}{parent}")
        except psutil.Error:
            # Gone or hidden since the tree was listed; it is simply left out.
            continue
    return ", ".join(items)


def _program(cmdline: list[str]) -> str:
    """`-m module` when the command runs one, else the executable's name."""
    if "-m" in cmdline[:-1]:
        return f"-m {cmdline[cmdline.index('-m') + 1]}"
    return cmdline[0].rsplit("/", 1)[-1] if cmdline else "?"


def _run_ns(pid: int, tid: int) -> int | None:
    """Nanoseconds the thread has run on a CPU; None where schedstat is missing."""
    try:
        with open(f"/proc/{pid}/task/{tid}/schedstat", encoding="ascii") as stat:
            return int(stat.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _thread_name(pid: int, tid: int) -> str:
    try:
        with open(f"/proc/{pid}/task/{tid}/comm", encoding="utf-8") as comm:
            return comm.read().strip()
    except OSError:
        return str(tid)
