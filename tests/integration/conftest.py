"""Fixtures of the integration tests: each one asks `stacks` for the stack it needs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from integration import pipeline
from integration.stacks import ENGINE_APP, REPO, exclusive_stack, stop_all
from sluice_cli.offline import OfflineStack


@pytest.fixture(scope="session", autouse=True)
def _stop_stacks_at_the_end() -> Iterator[None]:
    yield
    stop_all()


@pytest.fixture
def engine_stack(tmp_path_factory: pytest.TempPathFactory) -> OfflineStack:
    """The engine fixture app (tests/integration/engine_app), scheduler every second."""

    def make() -> OfflineStack:
        return OfflineStack(
            ENGINE_APP,
            env=None,
            start_api=False,
            schedule_period=1.0,
            state_dir=tmp_path_factory.mktemp("engine-state"),
        )

    return exclusive_stack("engine", make)


@pytest.hookimpl(trylast=True)  # after the fixtures' own teardown
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """Stop the stacks after the last integration test: moto's state and settings are
    process-wide, and unit tests that follow use moto's in-process mock."""
    here = Path(__file__).parent
    if nextitem is None or not Path(str(nextitem.fspath)).is_relative_to(here):
        stop_all()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything under tests/integration runs the offline stack."""
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).is_relative_to(here):
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def pipeline_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OfflineStack]:
    """Sluice's own template.yaml with the [local] settings plus the tests' short timings.

    Shared by every pipeline test; each test starts with a fresh, fast, error-free API simulator.
    Alert emails land in its SMTP sink (`stack.smtp`, and `<state dir>/mail/*.eml`).
    """

    def make() -> OfflineStack:
        return OfflineStack(
            REPO,
            env="local",
            overrides=pipeline.OVERRIDES,
            function_overrides=pipeline.FUNCTION_OVERRIDES,
            api_config=pipeline.SIMULATOR,
            schedule_period=1.0,
            state_dir=tmp_path_factory.mktemp("pipeline-state"),
        )

    stack = exclusive_stack("pipeline", make)
    assert stack.api is not None
    stack.api.configure(**pipeline.FAST_API)
    stack.api.reset()
    yield stack
    if stack.api is not None:  # a test may have stopped it (`sluice run` needs the process to itself)
        stack.api.configure(**pipeline.FAST_API)
