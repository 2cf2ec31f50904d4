"""Command line of the benchmark: options, kernel check, run, table, exit status."""

from __future__ import annotations

import argparse
import logging
import shlex
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import NoReturn

from jupyter_client.kernelspec import KernelSpecManager

from benchmarks.machine import Machine, describe
from benchmarks.metrics import METRICS, select
from benchmarks.report import build_table, render_markdown, render_text
from benchmarks.runner import Runner
from benchmarks.settings import Settings
from benchmarks.target import Target

__all__ = ["main"]

DEFAULT_MARKDOWN = Path(__file__).resolve().parent / "results.md"
EXIT_OK = 0
EXIT_METRIC_ERRORS = 1  # the run finished, but some metric reported "error: ..."
EXIT_USAGE = 2  # bad option, or a kernelspec that is not installed
EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM: partial results were still written


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="benchmarks/run.py",
        description=(
            "Run the same work against two Jupyter kernels, alternating them round by "
            "round, and print per metric each kernel's summary and their ratio."
        ),
        epilog=(
            f"Metrics: {', '.join(metric.name for metric in METRICS)}. Exit status: 0 "
            "when every metric ran, 1 when one reported an error, 2 for a usage "
            "error or a missing kernelspec, 130 after Ctrl-C."
        ),
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="fewer rounds and smaller waits (about 1 min)",
    )
    pair = parser.add_mutually_exclusive_group()
    pair.add_argument(
        "--kernels",
        default="pyrepl3,python3",
        help="the two kernelspecs to compare, A,B; the ratio column is A/B "
        "(default: %(default)s)",
    )
    pair.add_argument(
        "--single",
        metavar="KERNEL",
        help="run every metric against this kernelspec only",
    )
    parser.add_argument(
        "--only",
        metavar="METRICS",
        help="comma-separated metric names to run (default: all)",
    )
    parser.add_argument(
        "--markdown",
        type=Path,
        default=DEFAULT_MARKDOWN,
        help="where to write the Markdown report (default: benchmarks/results.md)",
    )
    parser.add_argument(
        "--keep-temp",
        action="store_true",
        help="keep the temporary directory with kernel logs and IPYTHONDIR",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log debug details"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    spec_names = [args.single] if args.single else _split(args.kernels)
    try:
        metrics = select(_split(args.only) if args.only else None)
        _check_kernels(spec_names)
    except ValueError as exc:
        print(f"run.py: {exc}", file=sys.stderr)
        return EXIT_USAGE

    settings = Settings.for_mode(quick=args.quick)
    machine = describe()
    workdir = Path(tempfile.mkdtemp(prefix="pyrepl3-bench-"))
    targets = [
        Target(name, label, workdir, settings)
        for name, label in zip(spec_names, _labels(spec_names), strict=True)
    ]
    runner = Runner(targets, metrics, settings, _progress)
    interrupted = False
    try:
        with _sigterm_as_interrupt():
            runner.run()
    except KeyboardInterrupt:
        interrupted = True
        _progress("interrupted: shutting down the kernels")
    finally:
        _close(targets, force=interrupted)

    _write_reports(runner, args, machine, workdir)
    if interrupted:
        return EXIT_INTERRUPTED
    return EXIT_METRIC_ERRORS if runner.has_errors() else EXIT_OK


def _write_reports(
    runner: Runner, args: argparse.Namespace, machine: Machine, workdir: Path
) -> None:
    """Print the table, write the Markdown file, and drop the temporary directory."""
    table = build_table(runner)
    print(render_text(table))
    if args.keep_temp:
        log_note = f"Kernel logs and IPYTHONDIR kept in `{workdir}`."
    else:
        log_note = None
        shutil.rmtree(workdir, ignore_errors=True)
    command = shlex.join(sys.orig_argv)
    markdown = render_markdown(runner, table, machine, command, log_note)
    args.markdown.parent.mkdir(parents=True, exist_ok=True)
    args.markdown.write_text(markdown, encoding="utf-8")
    kept = f"; kernel logs in {workdir}" if log_note else ""
    _progress(f"wrote {args.markdown}{kept}")


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _check_kernels(spec_names: list[str]) -> None:
    """Raise ValueError unless there are one or two names, each one installed."""
    if not 1 <= len(spec_names) <= 2:
        raise ValueError(f"--kernels takes two kernelspec names A,B, got {spec_names}")
    installed = KernelSpecManager().find_kernel_specs()
    missing = [name for name in spec_names if name not in installed]
    if missing:
        raise ValueError(
            f"kernelspec(s) {', '.join(missing)} not installed (have: "
            f"{', '.join(sorted(installed))}); install the package (`pip install .`) "
            "or choose others with --kernels / --single"
        )


def _labels(spec_names: list[str]) -> list[str]:
    """Column labels: the kernelspec names, numbered when the same one appears twice."""
    if len(set(spec_names)) == len(spec_names):
        return list(spec_names)
    return [f"{name}#{index}" for index, name in enumerate(spec_names, start=1)]


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _raise_interrupt(signum: int, frame: FrameType | None) -> NoReturn:
    raise KeyboardInterrupt(f"signal {signum}")


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Let SIGTERM end the run like Ctrl-C does, so the kernels are shut down."""
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _close(targets: list[Target], *, force: bool) -> None:
    """Shut every kernel down; a second Ctrl-C must not leave kernels behind."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        for target in targets:
            target.close(force=force)
    finally:
        signal.signal(signal.SIGINT, previous)
