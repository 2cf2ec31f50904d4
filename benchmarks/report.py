"""The results table, as aligned text for the terminal and as a Markdown file."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from benchmarks.machine import Machine
from benchmarks.runner import Outcome, Runner
from benchmarks.summary import format_cell, ratio, summarize

__all__ = ["Table", "build_table", "render_markdown", "render_text"]

# characters of an error message shown inside a cell; the notes have it whole
CELL_ERROR_CHARS = 60


@dataclass(frozen=True)
class Table:
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


def build_table(runner: Runner) -> Table:
    """One row per quantity of each metric; a ratio column when two kernels ran."""
    labels = [target.label for target in runner.targets]
    header = ["metric", "quantity", *labels]
    paired = len(labels) == 2
    if paired:
        header.append(f"{labels[0]}/{labels[1]}")
    rows: list[tuple[str, ...]] = []
    for metric in runner.metrics:
        outcomes = [runner.outcomes[(metric.name, label)] for label in labels]
        for row in metric.rows:
            values = [
                summarize(row, o.sample.values.get(row.source, [])) for o in outcomes
            ]
            cells = [
                _cell(outcome, format_cell(row, value))
                for outcome, value in zip(outcomes, values, strict=True)
            ]
            if paired:
                failed = any(o.error or not o.rounds for o in outcomes)
                cells.append("-" if failed else ratio(values[0], values[1]))
            rows.append((metric.name, row.quantity, *cells))
    return Table(tuple(header), tuple(rows))


def render_text(table: Table) -> str:
    widths = [
        max(len(line[column]) for line in (table.header, *table.rows))
        for column in range(len(table.header))
    ]

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.ljust(width) if column < 2 else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(table.header), rule, *(line(row) for row in table.rows)])


def render_markdown(
    runner: Runner,
    table: Table,
    machine: Machine,
    command: str,
    log_note: str | None,
) -> str:
    labels = [target.label for target in runner.targets]
    mode = "quick" if runner.settings.quick else "full"
    state = "complete" if runner.finished else "INTERRUPTED, partial results"
    lines = [
        f"# Kernel benchmark: {' vs '.join(labels)}",
        "",
        f"Mode: {mode} ({state}). Kernels alternate round by round "
        f"({' '.join(labels * 2)} ...); each cell summarises all rounds of one kernel.",
        "",
        "## Machine",
        "",
        *(f"- {text}" for text in machine.lines()),
        "",
        "## Command",
        "",
        "```",
        command,
        "```",
        "",
        "## Results",
        "",
        _markdown_row(table.header),
        _markdown_row(["---", "---", *(["--:"] * (len(table.header) - 2))]),
        *(_markdown_row(row) for row in table.rows),
        "",
        "## Method",
        "",
        *(f"- `{metric.name}`: {metric.method}." for metric in runner.metrics),
        "- p99 is the nearest-rank percentile: with fewer than 100 observations, "
        "the maximum.",
        "",
        "## Notes",
        "",
        *_notes(runner),
    ]
    if log_note:
        lines += ["", log_note]
    return "\n".join(lines) + "\n"


def _notes(runner: Runner) -> list[str]:
    notes: list[str] = []
    for metric in runner.metrics:
        for target in runner.targets:
            outcome = runner.outcomes[(metric.name, target.label)]
            prefix = f"- `{metric.name}` on {target.label}"
            if outcome.error:
                notes.append(
                    f"{prefix}: error after {outcome.rounds} rounds: {outcome.error}"
                )
            for text in outcome.sample.notes:
                notes.append(f"{prefix}: {text}")
    return notes or ["- none"]


def _cell(outcome: Outcome, formatted: str) -> str:
    """An error, "not run", or the formatted summary."""
    if outcome.error:
        error = outcome.error
        if len(error) > CELL_ERROR_CHARS:
            error = error[: CELL_ERROR_CHARS - 3] + "..."
        return f"error: {error}"
    return formatted if outcome.rounds else "not run"


def _markdown_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"
