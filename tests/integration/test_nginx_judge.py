"""Sluice judged by a rate limiter nobody on the team wrote: stock nginx's limit_req.

First the judge is shown to judge (it refuses what comes too soon and records every arrival), then
the offline stack delivers files to it: nginx must refuse nothing, every row must be answered 2xx
exactly once, and no sliding second may hold more arrivals than the declared limit.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from integration import pipeline
from integration.stacks import REPO, exclusive_stack
from sluice_cli.nginx_judge import LimitPolicy, NginxJudge, judge, parse_log, post
from sluice_cli.offline import OfflineStack
from sluice_cli.workload import orders_csv_bytes

RATE = int(pipeline.API_RATE)  # the judge's limit is the one Sluice is told
BURST = 5


@pytest.fixture(scope="module")
def nginx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NginxJudge]:
    with NginxJudge(LimitPolicy(rate=RATE, burst=BURST), tmp_path_factory.mktemp("nginx")) as server:
        yield server


def _nginx_stack(nginx: NginxJudge, tmp_path_factory: pytest.TempPathFactory) -> OfflineStack:
    return OfflineStack(
        REPO,
        env="local",
        overrides={**pipeline.OVERRIDES, "ApiUrl": f"{nginx.url}/rows", "ApiBurst": str(BURST)},
        function_overrides=pipeline.FUNCTION_OVERRIDES,
        start_api=False,
        schedule_period=1.0,
        state_dir=tmp_path_factory.mktemp("nginx-state"),
    )


def test_the_judge_refuses_requests_that_come_too_soon_and_logs_every_arrival(tmp_path: Path) -> None:
    # GIVEN nginx at 2 r/s with no burst: a request within 500 ms of the last accepted one is refused
    # (a slow rate, so that back-to-back requests stay back to back on a loaded machine)
    with NginxJudge(LimitPolicy(rate=2, burst=0), tmp_path) as strict:
        # WHEN five requests come back to back, then one after a pause longer than the interval
        statuses = [post(f"{strict.url}/rows", f"key-{i}") for i in range(5)]
        time.sleep(0.6)
        statuses.append(post(f"{strict.url}/rows", "key-0"))
        verdict = strict.verdict(at_least=len(statuses))

    # THEN only the first and the paced one are accepted, and the log agrees with what clients saw
    assert statuses == [200, 429, 429, 429, 429, 200]
    assert (verdict.requests, verdict.accepted, verdict.refused_429) == (6, 2, 4)
    assert verdict.duplicate_keys == 1  # key-0 answered 2xx twice
    assert verdict.busiest_second >= 5  # the five back-to-back ones at least


def test_a_burst_is_tolerated_up_to_its_size_and_no_further(tmp_path: Path) -> None:
    with NginxJudge(LimitPolicy(rate=2, burst=3), tmp_path) as bursty:
        statuses = [post(f"{bursty.url}/rows", f"b-{i}") for i in range(6)]
    assert statuses == [200, 200, 200, 200, 429, 429]


def test_the_log_parser_reads_arrival_as_end_minus_duration() -> None:
    arrivals = parse_log("100.500 0.200 200 k1\n100.900 0.010 429 k2\nnot a log line\n101.400 0.000 200 k1\n")
    assert [(round(a.at, 3), a.status, a.key) for a in arrivals] == [
        (100.3, 200, "k1"),
        (100.89, 429, "k2"),
        (101.4, 200, "k1"),
    ]
    verdict = judge(arrivals)
    assert (verdict.busiest_second, verdict.busiest_accepted_second, verdict.duplicate_keys) == (2, 1, 1)


def test_the_offline_stack_never_exceeds_a_limit_nginx_enforces(
    nginx: NginxJudge, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # GIVEN the stack told ApiRateLimit and ApiBurst = nginx's, delivering to nginx itself
    stack = exclusive_stack("nginx", lambda: _nginx_stack(nginx, tmp_path_factory))
    nginx.clear_log()

    # WHEN three files of 60 rows arrive together (more rows than one second's limit, so the
    # limiter, not the files, sets the pace)
    objects = []
    for seed in range(3):
        data, _ = orders_csv_bytes(60, seed=100 + seed)
        objects.append(pipeline.upload(stack, pipeline.unique_key(f"nginx-{seed}"), data))
    for obj in objects:
        pipeline.wait_for_state(stack, obj, {"SUCCEEDED"}, timeout=120)
    verdict = nginx.verdict(at_least=3 * 60)

    # THEN nginx refused nothing, saw each row answered once, and no second held more than the limit
    accepted = [a.key for a in nginx.arrivals(at_least=3 * 60) if a.status == 200]
    assert verdict.refused_429 == 0, verdict
    assert (len(accepted), len(set(accepted))) == (3 * 60, 3 * 60), "a row was not answered 2xx exactly once"
    assert verdict.busiest_second <= RATE, verdict


def test_a_limit_lower_than_declared_is_found_and_held_stack_wide(
    nginx: NginxJudge, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # GIVEN nginx at half the rate the stack is told (a quota shared with another client)
    stack = exclusive_stack("nginx", lambda: _nginx_stack(nginx, tmp_path_factory))
    low = RATE // 2
    nginx.restart(LimitPolicy(rate=low, burst=BURST))
    try:
        # WHEN three files of 60 rows arrive together
        objects = []
        for seed in range(3):
            data, _ = orders_csv_bytes(60, seed=200 + seed)
            objects.append(pipeline.upload(stack, pipeline.unique_key(f"nginx-low-{seed}"), data))
        for obj in objects:
            pipeline.wait_for_state(stack, obj, {"SUCCEEDED"}, timeout=120)
        arrivals = sorted(nginx.arrivals(at_least=3 * 60), key=lambda a: a.at)
    finally:
        nginx.restart(LimitPolicy(rate=RATE, burst=BURST))

    # THEN every row was answered 2xx exactly once (a 429 is retried, never doubled)...
    accepted = [a.key for a in arrivals if a.status == 200]
    assert (len(accepted), len(set(accepted))) == (3 * 60, 3 * 60), "a row was not answered 2xx exactly once"
    # ...and once the stack stepped down to nginx's rate (a few seconds), 429s are rare
    settled = [a for a in arrivals if a.at > arrivals[0].at + 5]
    refused = sum(1 for a in settled if a.status == 429)
    assert refused <= 0.05 * len(settled), f"{refused} of {len(settled)} refused after 5 s"
    assert judge(settled).busiest_accepted_second <= low + BURST
