"""Runs the selected metrics against the targets, alternating kernels round by round.

Round r of a metric runs its probe on the first kernel, then the second, then
round r+1 starts again with the first (A B A B ...), so slow drifts of the
machine (caches, thermal state, other load) touch both kernels alike. A probe
that fails marks its metric on that kernel "error: ..." and skips its later
rounds there; the session kernel is then restarted so that the next metrics
find it in a known state. Only Ctrl-C (or SIGTERM) ends a run early.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import final

from benchmarks.metric import Metric, Sample
from benchmarks.settings import Settings
from benchmarks.target import Target

__all__ = ["Outcome", "Runner"]

logger = logging.getLogger(__name__)

# characters of an exception message kept for the table and the notes
ERROR_CHARS = 300


@dataclass
class Outcome:
    """What one metric produced on one kernel."""

    sample: Sample = field(default_factory=Sample)
    rounds: int = 0  # rounds that completed
    error: str | None = None  # first failure; no rounds run after it


@final
class Runner:
    """Owns the run's loop; `outcomes` may be read at any time, also after Ctrl-C."""

    def __init__(
        self,
        targets: Sequence[Target],
        metrics: Sequence[Metric],
        settings: Settings,
        progress: Callable[[str], None],
    ) -> None:
        self.targets = tuple(targets)
        self.metrics = tuple(metrics)
        self.settings = settings
        self._progress = progress
        self.outcomes: dict[tuple[str, str], Outcome] = {
            (metric.name, target.label): Outcome()
            for metric in self.metrics
            for target in self.targets
        }
        self.finished = False

    def __repr__(self) -> str:
        failed = sum(1 for outcome in self.outcomes.values() if outcome.error)
        labels = [target.label for target in self.targets]
        return (
            f"<Runner targets={labels} metrics={len(self.metrics)} failed={failed}"
            f" finished={self.finished}>"
        )

    def run(self) -> None:
        self._start_sessions()
        selected = {metric.name for metric in self.metrics}
        covered = {name for metric in self.metrics for name in metric.covers}
        for metric in self.metrics:
            if metric.name in covered:
                continue
            self._run_metric(metric)
            for name in metric.covers:
                if name in selected:
                    for target in self.targets:
                        key = (metric.name, target.label)
                        self.outcomes[(name, target.label)] = self.outcomes[key]
        self.finished = True

    def has_errors(self) -> bool:
        return any(outcome.error for outcome in self.outcomes.values())

    def _start_sessions(self) -> None:
        """Boot every session kernel together; they double as a warm-up for start-up."""
        for target in self.targets:
            self._try(target, target.begin_session)
        for target in self.targets:
            self._try(target, target.session)

    def _try(self, target: Target, action: Callable[[], object]) -> None:
        try:
            action()
        except Exception as exc:
            # The probes that need this kernel will fail and report it in the table.
            self._progress(f"session kernel {target.label}: {_describe(exc)}")

    def _run_metric(self, metric: Metric) -> None:
        rounds = metric.quick_rounds if self.settings.quick else metric.rounds
        for index in range(1, rounds + 1):
            for target in self.targets:
                outcome = self.outcomes[(metric.name, target.label)]
                if outcome.error is None:
                    self._run_round(metric, target, outcome, f"{index}/{rounds}")

    def _run_round(
        self, metric: Metric, target: Target, outcome: Outcome, at: str
    ) -> None:
        began = time.monotonic()
        try:
            sample = metric.probe(target, self.settings)
        except Exception as exc:
            # Any failure of one probe becomes an "error" cell; the run goes on.
            outcome.error = _describe(exc)
            logger.debug(
                "probe failed metric=%s label=%s",
                metric.name,
                target.label,
                exc_info=True,
            )
            self._report(metric, target, at, began, f"error: {outcome.error}")
            target.recover()
            return
        outcome.sample.merge(sample)
        outcome.rounds += 1
        self._report(metric, target, at, began, "ok")

    def _report(
        self, metric: Metric, target: Target, at: str, began: float, status: str
    ) -> None:
        elapsed = time.monotonic() - began
        self._progress(
            f"{metric.name:<16} round {at:<5} {target.label:<12} {status}"
            f" ({elapsed:.1f} s)"
        )


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    return text if len(text) <= ERROR_CHARS else text[: ERROR_CHARS - 3] + "..."
