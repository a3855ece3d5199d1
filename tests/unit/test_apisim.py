"""The downstream API simulator over real HTTP on 127.0.0.1 (the one place unit tests open sockets).

Outcomes are asserted from counts and answers, never from how long something took, except the
generous bound on stopping while a request sleeps.
"""

import bisect
import json
import random
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import urllib3

from sluice_cli.apisim import (
    ApiSimulator,
    ApiSimulatorConfig,
    RejectRule,
    SlidingWindowLimiter,
    _per_second,
    main,
    max_in_window,
)


class FakeClock:
    """Monotonic seconds the test moves by hand: the limiter's boundaries, exactly."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def http() -> Iterator[urllib3.PoolManager]:
    pool = urllib3.PoolManager(maxsize=64, block=True, retries=False, timeout=10.0)
    yield pool
    pool.clear()


def post(
    http: urllib3.PoolManager, url: str, row: dict | None = None, key: str | None = "k"
) -> urllib3.BaseHTTPResponse:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Idempotency-Key"] = key
    return http.request("POST", url, body=json.dumps(row or {"order_id": "ORD-1"}), headers=headers)


def fast(**overrides: object) -> ApiSimulatorConfig:
    values: dict = {"rate_limit": 0, "latency_min": 0, "latency_max": 0, "error_rate": 0, "seed": 1}
    return ApiSimulatorConfig(**(values | overrides))


# -- the window arithmetic, on synthetic timestamps ----------------------------------------------


@pytest.mark.parametrize(
    ("times", "expected"),
    [
        ([], 0),
        ([5.0], 1),
        ([0.0, 1.0], 1),  # exactly one second apart: never in one window [t, t + 1)
        ([0.0, 0.999999], 2),
        ([0.0, 0.5, 1.0, 1.4], 3),  # [0.5, 1.5) holds 0.5, 1.0 and 1.4
        ([0.0, 0.0, 0.0], 3),  # simultaneous arrivals all count
        ([3.0, 0.1, 0.2, 2.9, 0.3], 3),  # unsorted input is sorted first
        ([i * 0.125 for i in range(100)], 8),  # 8 per second, evenly paced (exact binary fractions)
    ],
)
def test_max_in_window_counts_the_busiest_half_open_second(times: list[float], expected: int) -> None:
    assert max_in_window(times) == expected


def test_max_in_window_matches_brute_force_on_100k_bursty_arrivals() -> None:
    rnd = random.Random(3)
    times: list[float] = []
    t = 0.0
    for _ in range(100_000):
        t += rnd.expovariate(200) if rnd.random() < 0.9 else rnd.uniform(0, 0.001)  # bursts
        times.append(t)
    fast_answer = max_in_window(times)
    # Brute force: the busiest window can always start at an arrival; count from each one.
    brute = max(bisect.bisect_left(times, s + 1.0) - i for i, s in enumerate(times))
    assert fast_answer == brute


def test_limiter_admits_limit_per_sliding_second_and_does_not_count_refusals() -> None:
    limiter = SlidingWindowLimiter(3)
    assert [limiter.try_acquire(t) for t in (0.0, 0.1, 0.2, 0.3, 0.99)] == [True, True, True, False, False]
    # 0.0 leaves the window at exactly 1.0; the refused 0.3 and 0.99 never took a slot
    assert limiter.try_acquire(1.0) is True
    assert limiter.try_acquire(1.05) is False
    assert limiter.try_acquire(1.1) is True


# -- real HTTP -----------------------------------------------------------------------------------


def test_above_the_limit_answers_429_with_retry_after_and_only_admitted_calls_are_served(
    http: urllib3.PoolManager,
) -> None:
    clock = FakeClock()
    with ApiSimulator(fast(rate_limit=5), clock=clock) as sim:
        statuses = [post(http, f"{sim.url}/orders", key=f"k{i}").status for i in range(8)]
        throttled = post(http, f"{sim.url}/orders", key="late")
        clock.now += 0.999  # the window still holds the first five
        still = post(http, f"{sim.url}/orders", key="still").status
        clock.now += 0.001  # exactly one second after the first five: they leave the window
        after = [post(http, f"{sim.url}/orders", key=f"after{i}").status for i in range(6)]
        stats = sim.stats()

    assert statuses == [201] * 5 + [429] * 3
    assert throttled.status == 429
    assert throttled.headers["Retry-After"] == "1"
    assert still == 429
    assert after == [201] * 5 + [429]
    assert stats["requests"] == 8 + 1 + 1 + 6
    assert stats["throttled"] == 6
    assert stats["responses_by_status"] == {"201": 10, "429": 6}
    # The busiest window is over what arrived (10 at t=1000), the accepted one never above the limit.
    assert stats["max_requests_in_any_second"] == 10
    assert stats["max_accepted_in_any_second"] == 5
    assert stats["distinct_keys"] == 16
    assert stats["delivered_keys"] == 10


def test_concurrent_callers_with_duplicates_are_all_recorded(http: urllib3.PoolManager) -> None:
    # GIVEN 300 requests from 48 threads at once: 250 distinct keys, 50 of them sent twice
    keys = [f"key-{i}" for i in range(250)] + [f"key-{i}" for i in range(50)]
    with ApiSimulator(fast(latency_min=0.001, latency_max=0.005)) as sim:
        with ThreadPoolExecutor(48) as pool:
            answers = list(pool.map(lambda k: post(http, f"{sim.url}/v1/orders", key=k), keys))
        stats = sim.stats()
        deliveries = json.loads(http.request("GET", f"{sim.url}/deliveries").data)
        over_http = json.loads(http.request("GET", f"{sim.url}/stats").data)

    assert sorted(a.status for a in answers) == [200] * 50 + [201] * 250
    bodies = [json.loads(a.data) for a in answers]
    ids_by_key: dict[str, set[str]] = {}
    for body in bodies:
        ids_by_key.setdefault(body["idempotency_key"], set()).add(body["id"])
    assert all(len(ids) == 1 for ids in ids_by_key.values()), "a replayed key gets its first id"
    assert stats["requests"] == 300
    assert stats["distinct_keys"] == 250
    assert stats["duplicate_deliveries"] == 50
    assert stats["duplicate_keys"] == 50
    assert deliveries == {f"key-{i}": 2 if i < 50 else 1 for i in range(250)}
    assert sum(stats["arrivals_per_second"]) == 300
    assert stats["latency_ms"]["p50"] >= 1.0  # every served request slept at least 1 ms
    assert over_http["requests"] == 300
    assert over_http["duplicate_deliveries"] == 50


def test_a_request_without_idempotency_key_is_400_and_unknown_customer_is_422(
    http: urllib3.PoolManager,
) -> None:
    rules = (RejectRule("customer_email", r"@invalid\.example$", "unknown customer"),)
    with ApiSimulator(fast(rejects=rules)) as sim:
        no_key = post(http, sim.url, key=None)
        unknown = post(http, sim.url, {"customer_email": "ann@invalid.example"}, key="a")
        known = post(http, sim.url, {"customer_email": "ann@example.com"}, key="b")
        not_json = http.request("POST", sim.url, body=b"{oops", headers={"Idempotency-Key": "c"})
        stats = sim.stats()

    assert no_key.status == 400
    assert json.loads(no_key.data) == {"error": "missing Idempotency-Key header"}
    assert unknown.status == 422
    assert json.loads(unknown.data) == {"error": "unknown customer"}
    assert known.status == 201
    assert not_json.status == 400
    assert stats["responses_by_status"] == {"201": 1, "400": 2, "422": 1}
    assert stats["delivered_keys"] == 1


def test_config_makes_the_api_fail_then_recover_and_reset_forgets_calls(http: urllib3.PoolManager) -> None:
    with ApiSimulator(fast()) as sim:
        changed = http.request("POST", f"{sim.url}/config", body=json.dumps({"error_rate": 1.0}))
        failing = [post(http, sim.url, key=f"f{i}").status for i in range(5)]
        http.request("POST", f"{sim.url}/config", body=json.dumps({"error_rate": 0, "rate_limit": 2}))
        recovered = [post(http, sim.url, key=f"r{i}").status for i in range(3)]
        refused = http.request("POST", f"{sim.url}/config", body=json.dumps({"port": 1}))
        before_reset = sim.stats()
        reset = http.request("POST", f"{sim.url}/reset")
        after_reset = sim.stats()
        after_reset_call = post(http, sim.url, key="again").status

    assert changed.status == 200
    assert json.loads(changed.data)["error_rate"] == 1.0
    assert failing == [503] * 5
    assert recovered[:2] == [201, 201]  # rate_limit 2 now applies
    assert refused.status == 400
    assert before_reset["responses_by_status"]["503"] == 5
    assert reset.status == 200
    assert after_reset["requests"] == 0
    assert after_reset["responses_by_status"] == {}
    assert after_reset_call == 201  # the limiter's window was cleared too


def test_an_outage_answers_every_call_with_its_status_or_no_answer_until_it_is_switched_off(
    http: urllib3.PoolManager,
) -> None:
    with ApiSimulator(fast()) as sim:
        http.request("POST", f"{sim.url}/config", body=json.dumps({"down_status": 401}))
        refused = [post(http, sim.url, key=f"a{i}").status for i in range(3)]
        http.request(
            "POST", f"{sim.url}/config", body=json.dumps({"down_status": 0, "drop_connections": True})
        )
        with pytest.raises(urllib3.exceptions.ProtocolError):
            http.request(
                "POST", f"{sim.url}/orders", body=b"{}", headers={"Idempotency-Key": "d"}, retries=False
            )
        http.request("POST", f"{sim.url}/config", body=json.dumps({"drop_connections": False}))
        back = post(http, sim.url, key="a0").status
        deliveries = sim.deliveries()

    assert refused == [401] * 3
    assert back == 201
    assert deliveries == {"a0": 1}  # nothing refused during the outage counts as delivered


def new_threads(before: set[threading.Thread]) -> set[threading.Thread]:
    return set(threading.enumerate()) - before


def test_stop_closes_keep_alive_connections_and_leaves_no_thread(http: urllib3.PoolManager) -> None:
    before = set(threading.enumerate())
    sim = ApiSimulator(fast()).start()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: post(http, sim.url, key=str(i)), range(64)))
    # The client keeps its pooled connections open: each holds a server thread waiting for a request
    assert len(new_threads(before)) > 1
    sim.stop()
    assert new_threads(before) == set()
    sim.stop()  # idempotent


def test_stop_does_not_wait_for_a_request_sleeping_through_its_latency(http: urllib3.PoolManager) -> None:
    before = set(threading.enumerate())
    sim = ApiSimulator(fast(latency_min=30, latency_max=30)).start()
    answers: list[int] = []
    caller = threading.Thread(target=lambda: answers.append(post(http, sim.url, key="slow").status))
    caller.start()
    deadline = time.monotonic() + 5
    while sim.stats()["requests"] == 0:
        assert time.monotonic() < deadline, "the request never reached the simulator"
        time.sleep(0.01)
    began = time.monotonic()
    sim.stop()
    caller.join(10)
    assert time.monotonic() - began < 10  # far below the 30 s latency
    assert answers == [503]
    assert new_threads(before) == set()


def test_standalone_entry_serves_until_stopped(
    http: urllib3.PoolManager, capsys: pytest.CaptureFixture[str]
) -> None:
    stop = threading.Event()
    result: list[int] = []
    runner = threading.Thread(
        target=lambda: result.append(main(["--port", "0", "--rate", "7", "--latency", "0-0"], stop=stop))
    )
    runner.start()
    printed = ""
    deadline = time.monotonic() + 5
    while "API simulator on" not in printed:
        assert time.monotonic() < deadline, "the simulator never printed its URL"
        time.sleep(0.02)
        printed += capsys.readouterr().out
    url = re.search(r"http://127\.0\.0\.1:\d+", printed)
    assert url is not None
    answer = post(http, f"{url.group(0)}/orders", key="one")
    stop.set()
    runner.join(10)
    stats = json.loads(capsys.readouterr().out)
    assert result == [0]
    assert answer.status == 201
    assert stats["requests"] == 1
    assert stats["rate_limit"] == 7.0


def test_a_request_answered_across_a_reset_does_not_break_the_stats() -> None:
    # A request that arrived before a reset and was answered after it records its (earlier)
    # arrival in the new records: the per-second chart counts it in the first second (it raised
    # IndexError and failed a CI run's stats call)
    assert _per_second([985.0], start=1000.0) == [1]
    assert _per_second([985.0, 1000.5, 1002.2], start=1000.0) == [2, 0, 1]
