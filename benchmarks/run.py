"""Benchmark the pyrepl3 kernel against ipykernel's python3 kernel, side by side.

    python benchmarks/run.py                    # full run: a few minutes
    python benchmarks/run.py --quick            # about one minute
    python benchmarks/run.py --kernels python3,python3 --only roundtrip,startup_info
    python benchmarks/run.py --single pyrepl3 --quick

Progress goes to stderr, the table to stdout, and the same table with the
machine and the command line to `--markdown` (default benchmarks/results.md).
See `python benchmarks/run.py --help` for the options and exit status.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    # Started as a script: make the `benchmarks` package importable from the
    # repository root, which the interpreter does not put on sys.path itself.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.cli import main

if __name__ == "__main__":
    sys.exit(main())
