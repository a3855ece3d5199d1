"""The downstream's shared circuit breaker (sluice/health.py): on moto's ControlTable, a ManualClock
and a loopback API, what the API received and what the shared item holds."""

import json
import random
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from datapath_support import ApiServer, Received, Reply, create_tables
from moto import mock_aws

from sluice.alerting import Notification, render_alert
from sluice.downstream import DeliveryAbandoned, DownstreamClient, HttpTransport, RetryPolicy
from sluice.health import HEALTH_KEY, UNHEALTHY_METRIC, BreakerState, DownstreamHealth
from sluice.observability import MetricUnit
from sluice.ratelimit import ManualClock, SystemClock, shared_limiter

T0 = 1_800_000_000.0
ROW = {"order_id": "ORD-000001", "amount_cents": 1999}


@pytest.fixture
def table() -> Iterator[Any]:
    with mock_aws():
        yield create_tables()["ControlTable"]


class Alerts:
    """What would have gone to AlertTopic, and the breaker metric's values."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.metric: list[float] = []
        self._lock = threading.Lock()

    def notify(self, subject: str, message: dict[str, Any]) -> None:
        with self._lock:
            self.sent.append((subject, message))

    def add(self, name: str, unit: MetricUnit, value: float) -> None:
        assert name == UNHEALTHY_METRIC
        self.metric.append(value)

    @property
    def subjects(self) -> list[str]:
        return [subject for subject, _ in self.sent]


def health(table: Any, clock: Any, alerts: Alerts | None = None, **options: Any) -> DownstreamHealth:
    alerts = alerts or Alerts()
    return DownstreamHealth(table, clock=clock, notify=alerts.notify, metric=alerts.add, **options)


def client(server: ApiServer, table: Any, gate: DownstreamHealth, *, attempts: int = 3) -> DownstreamClient:
    return DownstreamClient(
        HttpTransport(server.url, pool_size=4, timeout_seconds=5),
        shared_limiter(table, limit=1000, clock=gate.clock),
        policy=RetryPolicy(max_attempts=attempts, backoff_base_seconds=0.01, backoff_max_seconds=0.05),
        clock=gate.clock,
        rng=random.Random(1),
        health=gate,
    )


def item(table: Any) -> dict[str, Any]:
    return table.get_item(Key={"pk": HEALTH_KEY}, ConsistentRead=True).get("Item", {})


def test_a_401_opens_the_breaker_and_the_row_is_retried_after_a_probe_instead_of_rejected(table: Any) -> None:
    # GIVEN an API whose credential is refused for the first three requests
    alerts = Alerts()
    gate = health(table, ManualClock(T0), alerts, probe_seconds=5)

    def respond(request: Received, seen: int) -> Reply:
        return Reply(401, {"error": "token expired"}) if seen < 3 else Reply(201, {"id": "r1"})

    with ApiServer(respond) as server:
        delivery = client(server, table, gate).deliver(ROW, "k1")

    # THEN the row was delivered, not rejected, on the same key; the probes were spaced by the backoff
    assert delivery.accepted
    assert delivery.answer == {"id": "r1"}
    assert server.keys() == ["k1"] * 4
    assert gate.clock.now() - T0 >= 5 + 10  # two probes failed: after 5 s, then 10 s more
    # AND the breaker opened once and closed once, each announced once
    assert alerts.subjects == ["Downstream unhealthy", "Downstream recovered"]
    assert "api 401" in alerts.sent[0][1]["reason"]
    assert alerts.metric[0] == 1
    assert alerts.metric[-1] == 0
    assert item(table)["state"] == BreakerState.CLOSED

    # AND each announcement renders as an email that says what happened and what to do
    unhealthy, recovered = (
        render_alert(Notification(message_id=f"m{n}", message=json.dumps(message), subject=subject))
        for n, (subject, message) in enumerate(alerts.sent)
    )
    assert (unhealthy.kind, unhealthy.subject) == ("downstream", "[Sluice] Downstream unhealthy")
    assert "api 401" in unhealthy.body
    assert "Delivery is paused for the whole stack" in unhealthy.body
    assert "sluice logs -f ProcessObjectFunction" in unhealthy.body
    assert "Runbook: docs/operations.md#downstream-api-unhealthy" in unhealthy.body
    assert (recovered.kind, recovered.subject) == ("downstream", "[Sluice] Downstream recovered")
    assert "delivery has resumed" in recovered.body


def test_an_open_breaker_holds_every_invocation_until_one_probe_succeeds(table: Any) -> None:
    # GIVEN two invocations on the same table; the first one saw a 403
    clock = ManualClock(T0)
    first_alerts, other_alerts = Alerts(), Alerts()
    first = health(table, clock, first_alerts, probe_seconds=5)
    other = health(table, clock, other_alerts, probe_seconds=5)
    first.refused("api 403: forbidden")

    # THEN the other one knows within its refresh, and may send only as the probe, once per backoff
    clock.advance(1)
    assert other.is_open()
    assert other.admit() is True  # waited until probe_at (T0 + 5), then claimed the probe
    assert clock.now() == pytest.approx(T0 + 5)
    assert first.admit() is True  # the next probe only after the backoff (10 s later)
    assert clock.now() == pytest.approx(T0 + 15)
    # WHEN a probe is answered
    first.answered(probe=True)
    # THEN both send freely again; only the invocations that made a transition announced it
    assert other.admit() is False
    assert first.admit() is False
    assert first_alerts.subjects == ["Downstream unhealthy", "Downstream recovered"]
    assert other_alerts.subjects == []


def test_sustained_failures_over_several_rows_open_it_one_row_failing_alone_does_not(table: Any) -> None:
    gate = health(table, ManualClock(T0), failure_threshold=4)

    assert not any(gate.failed("api 503", "only-row", probe=False) for _ in range(6))
    assert not gate.is_open()  # one row failing again and again is that row's problem

    gate.answered(probe=False)
    results = [gate.failed("connection refused", key, probe=False) for key in ("a", "b", "c", "d")]
    assert results == [False, False, False, True]
    assert item(table)["state"] == BreakerState.OPEN


def test_an_outage_does_not_use_up_a_rows_attempts(table: Any) -> None:
    # GIVEN a downstream refusing connections for a while (503 from every row), 2 attempts per row
    gate = health(table, ManualClock(T0), failure_threshold=2, probe_seconds=1)
    state = {"down": True}

    def respond(request: Received, seen: int) -> Reply:
        return Reply(503, {"error": "down"}) if state["down"] else Reply(201, {})

    with ApiServer(respond) as server:
        api = client(server, table, gate, attempts=2)
        gate.failed("connection refused", "another-row", probe=False)  # another row failed too
        failures = threading.Timer(0.5, lambda: state.update(down=False))
        failures.start()
        delivery = api.deliver(ROW, "k2")
        failures.join()

    # THEN more than 2 attempts were made (they did not count while unhealthy) and the row got through
    assert delivery.accepted
    assert delivery.attempts > 2
    assert not gate.is_open()


def test_a_stop_ends_the_wait_for_an_unhealthy_downstream(table: Any) -> None:
    gate = health(table, SystemClock(), probe_seconds=3600)
    gate.refused("api 401: expired")
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()

    with ApiServer() as server, pytest.raises(DeliveryAbandoned):
        client(server, table, gate).deliver(ROW, "k3", stop=stop)

    assert server.received == []
    assert item(table)["state"] == BreakerState.OPEN


def test_a_row_out_of_attempts_while_other_rows_fail_too_is_an_outage(table: Any) -> None:
    gate = health(table, ManualClock(T0), failure_threshold=100)
    gate.failed("api 503", "poison", probe=False)
    assert not gate.gave_up("api 503")  # failing alone: the row's own problem, it fails

    gate.failed("connection refused", "another", probe=False)
    assert gate.gave_up("connection refused")  # other rows fail too: it waits for the downstream
    assert item(table)["state"] == BreakerState.OPEN
