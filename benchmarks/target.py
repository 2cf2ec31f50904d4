"""One kernel of the comparison: a long-lived session kernel plus short-lived ones.

Most probes share the session kernel, which stays up for the whole run so that
the kernels of the comparison are measured alternately under the same
conditions. Start-up and memory probes take a fresh kernel from `fresh()`.
All kernels of a target share the run's temporary directory (IPYTHONDIR,
connection files, kernel logs).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import final

from benchmarks.driver import KernelDriver
from benchmarks.errors import BenchmarkError
from benchmarks.settings import Settings

__all__ = ["Target"]

logger = logging.getLogger(__name__)


@final
class Target:
    """The kernels of one kernelspec; owned by the main thread."""

    def __init__(self, spec_name: str, label: str, workdir: Path, settings: Settings):
        self.spec_name = spec_name
        self.label = label  # unique among the run's targets; a table column
        self._workdir = workdir
        self._settings = settings
        self._session: KernelDriver | None = None
        self._fresh: list[KernelDriver] = []  # started by fresh(), not yet shut down
        self._serial = itertools.count(1)

    def __repr__(self) -> str:
        return (
            f"<Target {self.label} session={self._session!r} fresh={len(self._fresh)}>"
        )

    def begin_session(self) -> None:
        """Launch the session kernel without waiting, so that kernels boot together."""
        if self._session is None:
            driver = self._new_driver("session")
            try:
                driver.start()
            except BaseException:
                driver.shutdown(force=True)
                raise
            self._session = driver

    def session(self) -> KernelDriver:
        """The session kernel, answering kernel_info; a dead one is restarted first."""
        self.begin_session()
        driver = self._session
        assert driver is not None, "begin_session always leaves a driver"
        if not driver.is_alive():
            logger.warning("session kernel restarted label=%s", self.label)
            driver.restart()
        driver.wait_ready(self._settings.start_timeout)
        driver.discard_pending()
        return driver

    def recover(self) -> None:
        """Restart the session kernel: a failed probe left it in an unknown state."""
        if self._session is None:
            return
        try:
            self._session.restart()
            self._session.wait_ready(self._settings.start_timeout)
        except (BenchmarkError, OSError, RuntimeError) as exc:
            logger.warning("session restart failed label=%s error=%s", self.label, exc)
            self._session.shutdown(force=True)
            self._session = None

    @contextmanager
    def fresh(self) -> Iterator[KernelDriver]:
        """A driver for a new kernel, not yet started; it is shut down on exit."""
        driver = self._new_driver("fresh")
        self._fresh.append(driver)
        try:
            yield driver
        finally:
            self._fresh.remove(driver)
            driver.shutdown()

    def close(self, *, force: bool = False) -> None:
        """Shut down every kernel of this target; `force` kills without asking."""
        drivers = [*self._fresh, *([self._session] if self._session else [])]
        self._fresh.clear()
        self._session = None
        for driver in drivers:
            try:
                driver.shutdown(force=force)
            except Exception:
                # Closing goes on with the other kernels whatever one of them does.
                logger.exception("shutdown failed driver=%r", driver)

    def _new_driver(self, role: str) -> KernelDriver:
        tag = f"{self.label}-{role}-{next(self._serial)}"
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in tag)
        return KernelDriver(self.spec_name, self._workdir, safe)
