"""Badly signed and malformed messages on the shell socket must change nothing."""

from __future__ import annotations

from kernel_driver import KernelDriver
from raw_shell import RawKind, RawShell

REJECT_WINDOW = 2.0  # seconds in which a rejected request must get no reply
SURVIVE_WINDOW = 1.0  # seconds given to the kernel to digest each bad message


def test_badly_signed_and_unsigned_requests_are_ignored(
    driver: KernelDriver, raw_shell: RawShell
) -> None:
    """Wrong-key and unsigned execute_requests neither run nor reply (ipython#689)."""
    for kind, marker in (
        (RawKind.BAD_SIGNATURE, "SIGNATURE-BYPASS"),
        (RawKind.UNSIGNED, "UNSIGNED-BYPASS"),
    ):
        msg_id = raw_shell.send(kind, code=f"print({marker!r})")
        replies = raw_shell.replies_within(REJECT_WINDOW)
        assert not [r for r in replies if r.parent_id == msg_id], kind

    cell = driver.execute("print('still serving')")

    assert cell.status == "ok"
    assert "still serving" in cell.stdout
    assert "SIGNATURE-BYPASS" not in driver.all_stdout
    assert "UNSIGNED-BYPASS" not in driver.all_stdout
    driver.assert_alive()
    driver.assert_next_cell_works()


def test_malformed_messages_neither_kill_nor_wedge_kernel(
    driver: KernelDriver, raw_shell: RawShell
) -> None:
    """Garbage, bad JSON, bad fields and unknown types are survived (ipython#689)."""
    for kind in (
        RawKind.GARBAGE,
        RawKind.BAD_JSON_CONTENT,
        RawKind.MISSING_CODE,
        RawKind.WRONG_TYPES,
        RawKind.UNKNOWN_TYPE,
    ):
        raw_shell.send(kind)
        raw_shell.replies_within(SURVIVE_WINDOW)

    cell = driver.execute("print('survived')")

    assert cell.status == "ok"
    assert "survived" in cell.stdout
    driver.assert_alive()
    driver.assert_next_cell_works()
