"""DispatcherLease handler, run with events/dispatcher-lease-acquire.json against a moto ControlTable."""

from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest
from conftest import load_function
from handler_support import (
    FakeLambdaContext,
    capture_powertools_output,
    correlation_ids,
    create_pk_table,
    emitted_metrics,
    load_event,
)
from moto import mock_aws

EVENT = load_event("dispatcher-lease-acquire.json")


@pytest.fixture
def handler(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Iterator[tuple[ModuleType, Any]]:
    monkeypatch.setenv("CONTROL_TABLE", "ControlTable")
    monkeypatch.setenv("MAX_ROUNDS_PER_EXECUTION", "2")
    monkeypatch.setenv("EXECUTION_TIME_BUDGET_SECONDS", "600")
    capture_powertools_output(monkeypatch)
    with mock_aws():
        table = create_pk_table("ControlTable")
        yield load_function("dispatcher_lease"), table


def invoke(module: ModuleType, **changes: Any) -> dict[str, Any]:
    return module.lambda_handler({**EVENT, **changes}, FakeLambdaContext())


def test_sample_acquire_takes_the_free_lease(
    handler: tuple[ModuleType, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    module, table = handler

    answer = invoke(module)

    assert answer["acquired"] is True
    assert answer["budget_left"] is True
    assert answer["deadline"].endswith("Z")
    item = table.get_item(Key={"pk": "lease#dispatcher"})["Item"]
    assert item["holder"] == EVENT["execution"]
    assert item["deadline"] == answer["deadline"]
    output = capsys.readouterr().out
    assert emitted_metrics(output)["LeaseAcquired"] == 1
    assert EVENT["execution"] in correlation_ids(output)


def test_second_execution_is_refused_and_counted(
    handler: tuple[ModuleType, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    module, table = handler
    invoke(module)
    capsys.readouterr()

    answer = invoke(module, execution="dispatch-overlapping")

    assert answer == {"acquired": False, "budget_left": False, "deadline": None}
    assert table.get_item(Key={"pk": "lease#dispatcher"})["Item"]["holder"] == EVENT["execution"]
    assert emitted_metrics(capsys.readouterr().out)["LeaseRefused"] == 1


def test_renew_until_the_round_budget_then_release(
    handler: tuple[ModuleType, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    module, table = handler
    invoke(module)

    assert invoke(module, operation="renew", round=1)["budget_left"] is True
    assert invoke(module, operation="renew", round=2)["budget_left"] is False  # MAX_ROUNDS_PER_EXECUTION=2
    capsys.readouterr()
    lost = invoke(module, operation="renew", execution="dispatch-other", round=1)
    assert lost["acquired"] is False
    assert emitted_metrics(capsys.readouterr().out)["LeaseLost"] == 1

    released = invoke(module, operation="release", round=2)

    assert released == {"acquired": False, "budget_left": False, "deadline": None}
    assert "Item" not in table.get_item(Key={"pk": "lease#dispatcher"})


def test_missing_table_name_fails_the_cold_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONTROL_TABLE", raising=False)

    with pytest.raises(RuntimeError, match="CONTROL_TABLE"):
        load_function("dispatcher_lease")
