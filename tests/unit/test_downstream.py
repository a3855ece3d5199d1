"""The downstream client against a real loopback HTTP server: what the API received, and when."""

import email.utils
import hashlib
import random
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from datapath_support import ApiServer, Received, Reply, create_tables
from moto import mock_aws

from sluice import downstream, ratelimit
from sluice.downstream import (
    DeliveryAbandoned,
    DownstreamClient,
    HttpTransport,
    RetryPolicy,
    SimulatedApi,
    TransientDownstreamError,
    client_from_settings,
    declared_answer_seconds,
    idempotency_key,
)
from sluice.models import ObjectRef
from sluice.observability import metrics
from sluice.ratelimit import ManualClock
from sluice.settings import ProcessSettings

T0 = 1_800_000_000.0
ROW = {"order_id": "ORD-000001", "amount_cents": 1999}
KEY = "0123456789abcdef0123456789abcdef"


class CountingPacer:
    """Stands in for the rate limiter: counts the slots taken and the pauses asked for."""

    def __init__(self, clock: Any = None) -> None:
        self.slots = 0
        self.pauses: list[float] = []
        self.throttles: list[float] = []
        self.trips: list[float | None] = []
        self.clock = clock or ratelimit.SystemClock()
        self._lock = threading.Lock()

    def acquire(self, stop: threading.Event | None = None, order: int | None = None) -> float:
        with self._lock:
            self.slots += 1
            return float(self.slots)

    def pause(self, until: float) -> None:
        with self._lock:
            self.pauses.append(until)

    def throttled(self, slot: float, retry_after: float | None = None) -> float:
        """A 429: the real limiter steps the stack down and pauses it; here, the pause only."""
        until = self.clock.now() + (retry_after or 0.0)
        self.throttles.append(slot)
        if retry_after:
            self.pause(until)
        return until

    def finished(self, sent_at: float, written_at: float | None) -> None:
        with self._lock:
            self.trips.append(None if written_at is None else written_at - sent_at)

    def give_back(self) -> None:
        pass


@pytest.fixture(autouse=True)
def fresh_metrics() -> Iterator[None]:
    metrics.clear_metrics()
    yield
    metrics.clear_metrics()


def counted(name: str) -> float:
    return sum(metrics.metric_set.get(name, {}).get("Value", []))


def client_for(
    server: ApiServer, *, attempts: int = 4, backoff_max: float = 20.0, timeout: float = 5.0
) -> tuple[DownstreamClient, CountingPacer, ManualClock]:
    clock = ManualClock(T0)
    pacer = CountingPacer(clock)
    client = DownstreamClient(
        HttpTransport(server.url, pool_size=4, timeout_seconds=timeout),
        pacer,
        policy=RetryPolicy(max_attempts=attempts, backoff_base_seconds=0.5, backoff_max_seconds=backoff_max),
        clock=clock,
        rng=random.Random(2),
    )
    return client, pacer, clock


def scripted(*replies: Reply) -> Any:
    """Answer the n-th request with replies[n] (the last one from then on)."""
    counter = iter(range(10**6))

    def respond(request: Received, seen: int) -> Reply:
        return replies[min(next(counter), len(replies) - 1)]

    return respond


def test_the_idempotency_key_is_the_documented_hash_of_the_rows_content() -> None:
    obj = ObjectRef(bucket="raw", key="in/orders.csv", version_id="v1")
    record = {"order_id": "A-1", "amount": "9.50"}
    content = hashlib.sha256(b'{"order_id": "A-1", "amount": "9.50"}').hexdigest()

    key = idempotency_key(obj, 7, record)

    assert key == hashlib.sha256(f'["raw", "in/orders.csv", 7, "{content}", ""]'.encode()).hexdigest()[:32]
    # the same row under another version (a re-upload, a copy in place, unversioned) keeps its key
    for other in (obj.model_copy(update={"version_id": "v2"}), ObjectRef(bucket="raw", key="in/orders.csv")):
        assert idempotency_key(other, 7, record) == key
    # another row number, other content, another key or bucket, or a resend token: another key
    assert idempotency_key(obj, 8, record) != key
    assert idempotency_key(obj, 7, {**record, "amount": "9.51"}) != key
    assert idempotency_key(obj.model_copy(update={"key": "in/other.csv"}), 7, record) != key
    assert idempotency_key(obj, 7, record, resend_token="again") != key
    assert len(key) == 32


def test_an_accepted_row_keeps_the_answer_and_the_api_gets_json_and_the_key() -> None:
    with ApiServer(scripted(Reply(201, {"id": "A-1"}))) as server:
        client, pacer, _ = client_for(server)
        delivery = client.deliver(ROW, KEY)

    assert delivery.accepted
    assert delivery.answer == {"id": "A-1"}
    assert delivery.attempts == 1
    [request] = server.received
    assert request.payload == ROW
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["Idempotency-Key"] == KEY
    assert pacer.slots == 1
    assert counted("ApiLatency") > 0
    assert counted("ApiRetries") == 0


def test_5xx_is_retried_with_the_same_key_each_attempt_taking_a_slot() -> None:
    replies = (Reply(503, {"error": "busy"}), Reply(500, b"oops"), Reply(200, {"ok": True}))
    with ApiServer(scripted(*replies)) as server:
        client, pacer, clock = client_for(server)
        delivery = client.deliver(ROW, KEY)

    assert delivery.accepted
    assert delivery.attempts == 3
    assert server.keys() == [KEY] * 3
    assert pacer.slots == 3  # every attempt, retries included, went through the limiter
    assert counted("ApiRetries") == 2
    # full jitter: the waits are random but never longer than base × 2^retry
    assert 0 <= clock.now() - T0 <= 0.5 + 1.0


def test_a_429_waits_at_least_its_retry_after_seconds() -> None:
    replies = (Reply(429, {"error": "slow down"}, {"Retry-After": "7"}), Reply(200, {}))
    with ApiServer(scripted(*replies)) as server:
        client, _, clock = client_for(server)
        delivery = client.deliver(ROW, KEY)

    assert delivery.accepted
    assert clock.now() - T0 >= 7
    assert counted("ApiThrottles") == 1
    assert counted("ApiRetries") == 1


def test_a_retry_after_http_date_is_honoured() -> None:
    later = email.utils.formatdate(T0 + 9, usegmt=True)
    with ApiServer(scripted(Reply(503, {}, {"Retry-After": later}), Reply(200, {}))) as server:
        client, _, clock = client_for(server)
        client.deliver(ROW, KEY)

    assert clock.now() - T0 >= 9


def test_a_garbled_retry_after_falls_back_to_the_backoff() -> None:
    with ApiServer(scripted(Reply(503, {}, {"Retry-After": "soon-ish"}), Reply(200, {}))) as server:
        client, _, clock = client_for(server)
        delivery = client.deliver(ROW, KEY)

    assert delivery.attempts == 2
    assert clock.now() - T0 <= 0.5


def test_a_retry_after_beyond_the_backoff_ceiling_pauses_the_stack_instead_of_failing_the_row() -> None:
    # GIVEN an API that asks for two minutes, longer than API_BACKOFF_MAX_SECONDS (20 s)
    with ApiServer(scripted(Reply(429, {}, {"Retry-After": "120"}), Reply(200, {}))) as server:
        client, pacer, clock = client_for(server, backoff_max=20)
        delivery = client.deliver(ROW, KEY)

    # THEN the row waited for it and was delivered; the shared pacer was told not to send before
    assert delivery.accepted
    assert [request.key for request in server.received] == [KEY, KEY]
    assert pacer.pauses == [T0 + 120]
    assert clock.now() - T0 >= 120


def test_a_stop_ends_a_retry_after_pause() -> None:
    stop = threading.Event()
    with ApiServer(scripted(Reply(429, {}, {"Retry-After": "3600"}))) as server:
        client = DownstreamClient(
            HttpTransport(server.url, pool_size=1, timeout_seconds=5),
            CountingPacer(),
            clock=ratelimit.SystemClock(),
        )
        timer = threading.Timer(0.3, stop.set)
        timer.start()
        with pytest.raises(DeliveryAbandoned):
            client.deliver(ROW, KEY, stop=stop)
        timer.join()

    assert len(server.received) == 1


def test_other_4xx_rejects_the_row_with_the_status_and_body() -> None:
    body = {"error": "amount_cents exceeds the customer's credit limit"}
    with ApiServer(scripted(Reply(422, body))) as server:
        client, _, _ = client_for(server)
        delivery = client.deliver(ROW, KEY)

    assert not delivery.accepted
    assert delivery.reason == 'api 422: {"error": "amount_cents exceeds the customer\'s credit limit"}'
    assert len(server.received) == 1


def test_a_long_error_body_is_cut_to_a_one_line_snippet() -> None:
    with ApiServer(scripted(Reply(400, b"bad\n\n  request " + b"x" * 500))) as server:
        client, _, _ = client_for(server)
        reason = client.deliver(ROW, KEY).reason

    assert reason is not None
    assert reason.startswith("api 400: bad request xxx")
    assert reason.endswith("…")
    assert len(reason) < 220


def test_exhausted_retries_raise_with_the_last_problem() -> None:
    with ApiServer(scripted(Reply(502, {"error": "bad gateway"}))) as server:
        client, pacer, _ = client_for(server, attempts=3)
        with pytest.raises(TransientDownstreamError, match=r"after 3 attempts.*api 502"):
            client.deliver(ROW, KEY)

    assert server.keys() == [KEY] * 3
    assert pacer.slots == 3


def test_a_timeout_is_retried() -> None:
    release = threading.Event()

    def respond(request: Received, seen: int) -> Reply:
        if seen == 0:
            release.wait(timeout=5)  # longer than the client's timeout
        return Reply(200, {"attempt": seen + 1})

    with ApiServer(respond) as server:
        client, _, _ = client_for(server, timeout=0.3)
        try:
            delivery = client.deliver(ROW, KEY)
        finally:
            release.set()

    assert delivery.answer == {"attempt": 2}
    assert server.keys() == [KEY, KEY]
    assert counted("ApiRetries") == 1


def test_connection_errors_are_retried_then_raised() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    clock = ManualClock(T0)
    pacer = CountingPacer(clock)
    client = DownstreamClient(
        HttpTransport(f"http://127.0.0.1:{port}/", pool_size=1, timeout_seconds=1),
        pacer,
        policy=RetryPolicy(max_attempts=3),
        clock=clock,
    )

    with pytest.raises(TransientDownstreamError, match=r"after 3 attempts.*NewConnectionError"):
        client.deliver(ROW, KEY)
    assert pacer.slots == 3


def test_a_request_to_an_api_that_never_answers_ends_at_the_deadline_abandoned_not_failed() -> None:
    # GIVEN an API that accepts the connection (the kernel's backlog) and never answers, a request
    # timeout of 20 s and a segment that stops in 0.5 s
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/orders"
        client = DownstreamClient(
            HttpTransport(url, pool_size=1, timeout_seconds=20),
            CountingPacer(),
            policy=RetryPolicy(max_attempts=4),
        )
        started = time.monotonic()

        # WHEN a row is sent
        with pytest.raises(DeliveryAbandoned, match="deadline"):
            client.deliver(ROW, KEY, deadline=started + 0.5)
        took = time.monotonic() - started

    # THEN the request ended at the deadline, not at its own timeout, and is no failed attempt
    assert 0.4 < took < 1.5, f"{took:.2f} s"
    assert counted("ApiRetries") == 0


def test_no_request_starts_after_the_deadline() -> None:
    with ApiServer() as server:
        client, _, _ = client_for(server)

        with pytest.raises(DeliveryAbandoned, match="out of time"):
            client.deliver(ROW, KEY, deadline=time.monotonic() - 0.1)

    assert server.keys() == []


@pytest.mark.parametrize(("body", "answer"), [(b"", None), (b"OK, thanks", "OK, thanks")])
def test_a_2xx_answer_that_is_not_json_is_kept_as_text(body: bytes, answer: Any) -> None:
    with ApiServer(scripted(Reply(200, body))) as server:
        client, _, _ = client_for(server)

        assert client.deliver(ROW, KEY).answer == answer


def test_full_jitter_stays_within_its_ceiling() -> None:
    policy, rng = RetryPolicy(backoff_base_seconds=0.5, backoff_max_seconds=4), random.Random(1)

    for retry, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (9, 4.0)]:
        waits = [policy.backoff(retry, rng) for _ in range(200)]
        assert all(0 <= wait <= ceiling for wait in waits)
        assert max(waits) > ceiling * 0.8  # spread over the whole range, not a fixed delay


def test_the_simulated_api_is_slow_then_accepts() -> None:
    clock = ManualClock(T0)
    api = SimulatedApi(
        latency_min_seconds=5, latency_max_seconds=30, failure_rate=0, clock=clock, rng=random.Random(3)
    )
    client = DownstreamClient(api, CountingPacer(), clock=clock)

    delivery = client.deliver(ROW, KEY)

    assert delivery.answer == {"status": "accepted", "id": f"sim-{KEY[:16]}"}
    assert 5 <= clock.now() - T0 <= 30


def test_the_simulated_api_fails_like_a_503_so_it_is_retried() -> None:
    clock = ManualClock(T0)
    api = SimulatedApi(latency_min_seconds=0, latency_max_seconds=0, failure_rate=1.0, clock=clock)
    pacer = CountingPacer()
    client = DownstreamClient(api, pacer, policy=RetryPolicy(max_attempts=3), clock=clock)

    with pytest.raises(TransientDownstreamError, match="api 503"):
        client.deliver(ROW, KEY)
    assert pacer.slots == 3
    assert counted("ApiRetries") == 2


def test_the_simulated_latency_follows_the_seeded_range() -> None:
    clock = ManualClock(T0)
    api = SimulatedApi(
        latency_min_seconds=2, latency_max_seconds=1, failure_rate=0.5, clock=clock, rng=random.Random(4)
    )
    statuses = []
    for _ in range(200):
        before = clock.now()
        statuses.append(api.send(b"{}", {"Idempotency-Key": KEY}).status)
        waited = clock.now() - before
        assert waited >= 1  # min and max given the wrong way round still work
        assert waited <= 2
    assert set(statuses) == {200, 503}
    assert 60 < statuses.count(503) < 140


def settings(**values: Any) -> ProcessSettings:
    base = {
        "METADATA_TABLE": "MetadataTable",
        "CONTROL_TABLE": "ControlTable",
        "IDEMPOTENCY_TABLE": "IdempotencyTable",
        "PROCESSED_BUCKET": "processed",
        "API_RATE_LIMIT": "1000",
        "STAGE": "local",  # the test servers listen on http://127.0.0.1
        "API_URL": "https://api.example.com/rows",  # a test that sends gives its server's
    }
    return ProcessSettings.from_env({**base, **{name.upper(): str(value) for name, value in values.items()}})


def test_client_from_settings_posts_to_api_url_paced_on_the_control_table() -> None:
    with mock_aws(), ApiServer() as server:
        table = create_tables()["ControlTable"]
        client = client_from_settings(settings(api_url=server.url), table)

        delivery = client.deliver(ROW, KEY)

        assert delivery.accepted
        assert server.keys() == [KEY]
        assert table.get_item(Key={"pk": "ratelimit#downstream"})["Item"]["tat"] > 0


def test_client_from_settings_in_simulated_mode_uses_the_simulated_api_and_counts_it() -> None:
    with mock_aws():
        table = create_tables()["ControlTable"]
        client = client_from_settings(
            settings(
                api_mode="simulated",
                simulated_latency_min_seconds=0,
                simulated_latency_max_seconds=0,
                simulated_failure_rate=0,
            ),
            table,
        )

        assert client.deliver(ROW, KEY).answer == {"status": "accepted", "id": f"sim-{KEY[:16]}"}
    assert counted(downstream.SIMULATED_DELIVERIES_METRIC) == 1


def test_the_pacing_tolerates_the_configured_lateness(monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a downstream reached over a jittery network: up to 250 ms from slot to arrival
    built: list[tuple[dict[str, Any], ratelimit.RateLimiter]] = []

    def spy(table: Any, **kwargs: Any) -> ratelimit.RateLimiter:
        limiter = ratelimit.shared_limiter(table, **kwargs)
        built.append((kwargs, limiter))
        return limiter

    monkeypatch.setattr(downstream, "shared_limiter", spy)
    with mock_aws():
        table = create_tables()["ControlTable"]
        client_from_settings(
            settings(
                api_rate_limit=10,
                api_burst=2,
                api_rate_lateness_seconds=0.25,
                api_max_in_flight=6,
                concurrency_max=3,
            ),
            table,
        )

    # THEN the stack's bucket paces for the declared policy, assuming that lateness until it has
    # measured its own (a thread waking more than half of it late forfeits), and the invocation
    # keeps to its share of the requests in flight (6 over CONCURRENCY_MAX 3)
    ((kwargs, limiter),) = built
    assert kwargs["policy"] == ratelimit.ApiPolicy(rate=10.0, burst=2)
    assert (kwargs["lateness_seconds"], kwargs["max_in_flight"]) == (0.25, 2)
    assert limiter.wake_tolerance == pytest.approx(0.125)
    # and without the setting, the default the pacing proof in ratelimit.py is written for
    assert settings().api_rate_lateness_seconds == ratelimit.DEFAULT_LATENESS_SECONDS


def test_a_window_form_reaches_the_limiter_and_an_impossible_one_is_refused_at_cold_start() -> None:
    # GIVEN "1,000 per minute, fixed window" as the template declares it
    window = settings(api_rate_limit=16.67, api_rate_form="fixed-window", api_rate_window_seconds=60)

    # THEN the limiter's policy counts 1,000 per 60 s window; and a window allowing less than one
    # request is refused with the settings' message, not at the first row
    assert window.api_policy == ratelimit.ApiPolicy(
        rate=16.67, burst=5, form="fixed-window", window_seconds=60
    )
    assert window.api_policy.per_window == 1000
    with pytest.raises(RuntimeError, match="API policy"):
        settings(api_rate_limit=0.5, api_rate_form="sliding-window", api_rate_window_seconds=1)


def test_once_stopped_a_failed_row_is_abandoned_instead_of_retried() -> None:
    stop = threading.Event()
    stop.set()
    with ApiServer(scripted(Reply(503, {}), Reply(200, {}))) as server:
        client, pacer, clock = client_for(server)
        with pytest.raises(DeliveryAbandoned, match=r"stopped before attempt 2.*api 503"):
            client.deliver(ROW, KEY, stop=stop)

    assert server.keys() == [KEY]  # the first attempt was made: the row had been handed out
    assert pacer.slots == 1
    assert clock.now() == T0  # no backoff slept


def test_a_row_handed_out_before_the_stop_still_gets_its_first_attempt() -> None:
    stop = threading.Event()
    stop.set()
    with ApiServer() as server:
        client, _, _ = client_for(server)

        assert client.deliver(ROW, KEY, stop=stop).accepted


def test_a_429_is_news_for_the_stack_not_a_failed_attempt_of_the_row() -> None:
    # GIVEN an API that refuses a row four times with a bare 429 (no Retry-After), then accepts it,
    # and a client allowed only two attempts per row
    replies = (*[Reply(429, {"error": "slow down"})] * 4, Reply(200, {}))
    with ApiServer(scripted(*replies)) as server:
        client, pacer, _ = client_for(server, attempts=2)
        delivery = client.deliver(ROW, KEY)

    # THEN the row was delivered: each 429 went to the limiter with its slot (the stack steps
    # down and pauses), none counted against the row; every attempt's trip was measured
    assert delivery.accepted
    assert pacer.throttles == [1.0, 2.0, 3.0, 4.0]
    assert len(pacer.trips) == 5
    assert all(trip is not None and trip >= 0 for trip in pacer.trips)
    assert counted("ApiThrottles") == 4


def test_a_connection_is_open_before_the_slot_is_taken() -> None:
    with ApiServer() as server:
        transport = HttpTransport(server.url, pool_size=2, timeout_seconds=5)
        pool = transport._pool.connection_from_url(server.url)

        transport.ready()

        connection = pool._get_conn()
        assert connection.is_connected, "ready() left the pool's connection unopened"
        pool._put_conn(connection)


@pytest.mark.parametrize("declared", [True, False], ids=["server-timing", "no-server-timing"])
def test_the_time_an_api_declares_it_worked_is_not_measured_as_lateness(declared: bool) -> None:
    # GIVEN an API that takes 400 ms to answer every other request (its own work, after arrival),
    # saying so in Server-Timing, or not
    def slow_every_other(request: Received, seen: int) -> Reply:
        worked = 0.4 if int(request.key, 16) % 2 else 0.0
        time.sleep(worked)
        timing = {"Server-Timing": f'db;dur=12.5, app;dur={worked * 1000:.1f};desc="work"'}
        return Reply(200, {"status": "accepted"}, timing if declared else {})

    pacer = CountingPacer(ratelimit.SystemClock())
    with ApiServer(slow_every_other) as server:
        client = DownstreamClient(
            HttpTransport(server.url, pool_size=1, timeout_seconds=5), pacer, clock=ratelimit.SystemClock()
        )
        for number in range(6):
            assert client.deliver(ROW, f"{number:032x}").accepted

    # THEN with the header the limiter is told trips without the API's 400 ms (the lateness it
    # paces for); without it, the whole answer time counts (safe: the arrival was no later)
    trips = [trip for trip in pacer.trips if trip is not None]
    assert len(trips) == 6
    slow = trips[1::2]
    if declared:
        assert all(trip < 0.2 for trip in trips), trips
    else:
        assert all(trip >= 0.4 for trip in slow), trips


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (None, 0.0),
        ("app;dur=150", 0.15),
        ('db;dur=53, app;dur=47.2;desc="x"', 0.053),
        ("cache;desc=hit", 0.0),
    ],
)
def test_server_timing_declares_the_apis_own_time(header: str | None, seconds: float) -> None:
    assert declared_answer_seconds(header) == pytest.approx(seconds)
