"""Workload sizes, waits and timeouts of a run: the quick set and the full set."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Settings"]


@dataclass(frozen=True)
class Settings:
    """Every number a probe uses; build one with `Settings.for_mode`."""

    quick: bool
    roundtrip_batch: int  # `pass` executions per round
    output_lines: int  # lines printed by the output_lines cell
    output_big_bytes: int  # length of the one string printed by output_big
    interrupt_settle: float  # s between execute_input and the interrupt
    interrupt_cap: float  # s to wait for the interrupted cell's reply
    # s to wait for execute_input before interrupting anyway: ipykernel cannot
    # publish it while the cell's C code holds the GIL.
    execute_input_wait: float
    input_batch: int  # input() round trips per round
    idle_seconds: float  # length of the idle window
    idle_settle: float  # s of quiet before the idle window opens
    flood_seconds: float  # how long the memory probe lets a print flood run
    memory_settle: float  # s between an event and its memory reading
    memory_sample_interval: float  # s between PSS samples during the flood
    start_timeout: float  # s for a new kernel to answer kernel_info
    cell_timeout: float  # s for any one cell to reach idle

    @classmethod
    def for_mode(cls, *, quick: bool) -> Settings:
        return cls(
            quick=quick,
            roundtrip_batch=50,
            output_lines=100_000,
            # 20 MB as specified; quick mode shrinks it because a kernel that
            # rate-limits output to 1 MB/s alone would take 20 s per run.
            output_big_bytes=5_000_000 if quick else 20_000_000,
            interrupt_settle=0.3,
            interrupt_cap=5.0,
            execute_input_wait=1.0,
            input_batch=5 if quick else 10,
            idle_seconds=5.0 if quick else 30.0,
            idle_settle=1.0,
            flood_seconds=3.0 if quick else 10.0,
            memory_settle=1.0 if quick else 2.0,
            memory_sample_interval=0.1,
            start_timeout=60.0,
            cell_timeout=120.0,
        )
