"""The offline stacks the integration tests share, and the waits they use.

moto keeps its state per process, so one OfflineStack runs at a time. Each kind of stack (the
engine's own fixture app, the real application) is started when a test first needs it and kept
for the tests after it; asking for another kind stops the running one first.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sluice_cli.offline import OfflineStack

REPO = Path(__file__).resolve().parents[2]
ENGINE_APP = Path(__file__).resolve().parent / "engine_app"

_running: dict[str, OfflineStack] = {}


def exclusive_stack(kind: str, factory: Callable[[], OfflineStack]) -> OfflineStack:
    """The running stack of this kind, or a new one (after stopping any other kind)."""
    if kind in _running:
        return _running[kind]
    for other in list(_running):
        _running.pop(other).stop()
    stack = factory()
    stack.start()
    _running[kind] = stack
    return stack


def stop_stack(kind: str) -> None:
    if kind in _running:
        _running.pop(kind).stop()


def stop_all() -> None:
    for kind in list(_running):
        stop_stack(kind)
