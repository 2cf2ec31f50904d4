"""What a metric is: a probe run against one kernel per round, and its table rows."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from benchmarks.summary import Row

if TYPE_CHECKING:
    from benchmarks.settings import Settings
    from benchmarks.target import Target

__all__ = ["Metric", "Probe", "Sample"]


@dataclass
class Sample:
    """Observations of one or more rounds: raw values per key (seconds, counts)."""

    values: dict[str, list[float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # facts for the report's notes

    def add(self, key: str, value: float) -> None:
        self.values.setdefault(key, []).append(value)

    def extend(self, key: str, values: list[float]) -> None:
        self.values.setdefault(key, []).extend(values)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def merge(self, other: Sample) -> None:
        for key, values in other.values.items():
            self.extend(key, values)
        for text in other.notes:
            self.note(text)


class Probe(Protocol):
    def __call__(self, target: Target, settings: Settings) -> Sample:
        """Run one round against `target`; raise on any failure."""
        ...


@dataclass(frozen=True)
class Metric:
    name: str
    probe: Probe
    rows: tuple[Row, ...]
    rounds: int  # rounds per kernel in a full run; kernels alternate each round
    quick_rounds: int
    method: str  # one sentence for the report: what is timed, from where to where
    # Metrics whose rows this probe's Sample also fills: when both are selected,
    # only this one runs.
    covers: tuple[str, ...] = ()
