"""How the observations of one metric on one kernel become table cells.

A `Row` names one quantity of a metric: which observations it reads and how it
summarises them (median, p99, ...). Percentiles use the nearest-rank method,
so the p99 of fewer than 100 observations is simply their maximum.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

__all__ = ["Cell", "Row", "Summary", "format_cell", "percentile", "ratio", "summarize"]

Cell = float | str  # a number, or text such as "yes", "2/3", "n/a"


class Summary(Enum):
    MEDIAN = "median"
    P99 = "p99"
    MAX = "max"
    ALL_YES = "all yes"  # "yes" when every observation is 1, else "no"
    COUNT = "count"  # "k/n": how many of the n observations are 1


@dataclass(frozen=True)
class Row:
    """One line of the table for a metric."""

    quantity: str  # label with its unit, e.g. "median (ms)"
    source: str  # key of the observations in the probe's Sample
    summary: Summary
    scale: float = 1.0  # applied to the summary, e.g. 1e3 for s -> ms
    digits: int = 1  # decimals shown


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile: the smallest value with `fraction` of all at or below.

    Raises:
        ValueError: `values` is empty or `fraction` is outside (0, 1].
    """
    if not values:
        raise ValueError("percentile of no values")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def summarize(row: Row, values: Sequence[float]) -> Cell:
    """The cell for `row` from all observations of one kernel; "n/a" when none."""
    if row.summary is Summary.COUNT:
        return f"{sum(1 for value in values if value == 1)}/{len(values)}"
    if not values:
        return "n/a"
    if row.summary is Summary.ALL_YES:
        return "yes" if all(value == 1 for value in values) else "no"
    if row.summary is Summary.MEDIAN:
        return statistics.median(values) * row.scale
    if row.summary is Summary.P99:
        return percentile(values, 0.99) * row.scale
    return max(values) * row.scale


def format_cell(row: Row, cell: Cell) -> str:
    if isinstance(cell, str):
        return cell
    return f"{cell:,.{row.digits}f}"


def ratio(first: Cell, second: Cell) -> str:
    """`first / second` as text, or "-" where it means nothing."""
    if isinstance(first, str) or isinstance(second, str):
        return "-"
    if second == 0:
        return "-" if first == 0 else "inf"
    return f"{first / second:.2f}"
