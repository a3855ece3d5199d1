"""Waiting with a deadline: every wait says what it waited for when the deadline passes."""

from __future__ import annotations

import time
from collections.abc import Callable


class WaitTimeout(TimeoutError):
    pass


def wait_for[T](
    probe: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    interval: float = 0.25,
    describe: Callable[[], str] | None = None,
) -> T:
    """Call `probe` until it answers something truthy; raise WaitTimeout naming `what` after `timeout`.

    `describe` adds the state seen last to the message (e.g. the states of the files still open).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() >= deadline:
            detail = f" ({describe()})" if describe is not None else ""
            raise WaitTimeout(f"gave up after {timeout:.0f} s waiting for {what}{detail}")
        time.sleep(interval)
