"""The local scheduler's pause: what tests rely on to drive executions themselves."""

import threading
from concurrent.futures import ThreadPoolExecutor

from sluice_cli.offline.provision import ScheduleTarget
from sluice_cli.offline.scheduler import LocalScheduler

FUNCTION_ARN = "arn:aws:lambda:us-east-1:123456789012:function:sluice-local-ScaleConcurrency"


def test_a_pause_waits_for_the_tick_already_firing() -> None:
    # GIVEN a tick in the middle of firing its target
    firing, release = threading.Event(), threading.Event()
    fired: list[str] = []

    def invoke_async(arn: str, payload: bytes) -> None:
        firing.set()
        release.wait(timeout=10)
        fired.append(arn)

    scheduler = LocalScheduler(
        [ScheduleTarget(source="ScaleSchedule", expression="rate(1 minute)", target_arn=FUNCTION_ARN)],
        period_seconds=3,
        stepfunctions=None,
        invoke_async=invoke_async,
        source_arn=lambda source: f"arn:aws:events:us-east-1:123456789012:rule/{source}",
        region="us-east-1",
        account="123456789012",
    )
    ticking = threading.Thread(target=scheduler.tick)
    ticking.start()
    assert firing.wait(timeout=10)

    # WHEN a caller pauses the scheduler meanwhile
    inside = threading.Event()
    seen_inside: list[list[str]] = []

    def pause() -> None:
        with scheduler.paused():
            seen_inside.append(list(fired))
            inside.set()

    pausing = threading.Thread(target=pause)
    pausing.start()

    # THEN its block waits while the tick fires, and starts once what the tick fired has been fired
    assert not inside.wait(timeout=0.3)
    release.set()
    assert inside.wait(timeout=10)
    pausing.join(timeout=10)
    ticking.join(timeout=10)
    assert seen_inside == [[FUNCTION_ARN]]


def test_a_pause_waits_for_the_function_a_tick_invoked_to_end() -> None:
    # GIVEN a tick that invoked a function (WakeDispatcher) still running on the runtime's executor
    executor = ThreadPoolExecutor(max_workers=1)
    running, release = threading.Event(), threading.Event()
    ended: list[str] = []

    def wake(arn: str) -> None:
        running.set()
        release.wait(timeout=10)  # e.g. about to start an execution
        ended.append(arn)

    scheduler = LocalScheduler(
        [ScheduleTarget(source="DispatchSchedule", expression="rate(1 minute)", target_arn=FUNCTION_ARN)],
        period_seconds=3,
        stepfunctions=None,
        invoke_async=lambda arn, payload: executor.submit(wake, arn),
        source_arn=lambda source: f"arn:aws:events:us-east-1:123456789012:rule/{source}",
        region="us-east-1",
        account="123456789012",
    )
    scheduler.tick()
    assert running.wait(timeout=10)

    # WHEN a caller pauses the scheduler
    inside = threading.Event()
    seen_inside: list[list[str]] = []

    def pause() -> None:
        with scheduler.paused():
            seen_inside.append(list(ended))
            inside.set()

    pausing = threading.Thread(target=pause)
    pausing.start()

    # THEN its block starts only once the invocation has ended
    assert not inside.wait(timeout=0.3)
    release.set()
    assert inside.wait(timeout=10)
    pausing.join(timeout=10)
    executor.shutdown(wait=True)
    assert seen_inside == [[FUNCTION_ARN]]
