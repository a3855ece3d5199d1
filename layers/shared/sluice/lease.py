"""The dispatcher lease: at most one dispatcher execution runs at a time.

The schedule starts a dispatcher execution every few minutes whether or not the previous one has
finished. Each execution first acquires the lease item (`pk = "lease#dispatcher"` in ControlTable)
with a conditional write, and ends at once when another execution holds it. Between rounds it
renews the lease and learns whether its budget (rounds, time) is spent; at the end it releases it.

Why a lease and not a lock: a lock must be released, and an execution that dies (timeout,
aborted by hand, a failed Catch path) releases nothing. A lease carries its own expiry
(`expires_at` = now + ExecutionTimeBudgetSeconds + margin), so a dead holder stops counting once
it passes and the next scheduled execution takes over: a crash delays the dispatcher by at most
one budget, it never wedges it. The margin covers the round still running when the budget runs
out. Every write is conditional (absent / expired / ours), so two executions that race for the
lease cannot both win, and one cannot renew or release a lease another execution has taken over.

Items: `holder` (execution name), `acquired_at` and `deadline` (ISO-8601 UTC, deadline =
acquired_at + budget), `expires_at` (epoch seconds, also usable as the table's TTL attribute),
`round` and `renewed_at` after a renewal, `events`: the execution's history events so far, counted
at their worst case (below).

The history quota: a Standard execution fails, uncaught, at 25,000 history events (its lease held
until it expires, its items without failure handling). The renewal after each round adds the
round's worst case, counted from what its items did (each item's output is its progress,
`{"segment": n, "output_calls": k}`), and allows another round only if the worst possible next
round still fits (every item running its whole turn and then WriteOutput's every call):

    events + worst_round(concurrency_max, segments_per_turn) + END_EVENTS <= EVENT_BUDGET

The per-state counts are docs/architecture.md's table "History events", measured on the state
machine's own history and with every Retry of the path exhausted (the worst case).
"""

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

from boto3.dynamodb.conditions import Attr
from botocore.exceptions import ClientError
from pydantic import BaseModel, Field

from sluice.ddb import condition_failed_item
from sluice.models import MAX_OUTPUT_CALLS
from sluice.observability import logger
from sluice.settings import LeaseSettings

LEASE_KEY = "lease#dispatcher"

# Step Functions' quota on one Standard execution's history, and the share of it a dispatcher
# execution plans to use: the rest (5,000 events) is the margin for what the worst cases below
# do not foresee (a state added without updating them).
HISTORY_EVENT_QUOTA = 25_000
EVENT_BUDGET = 20_000
# Worst cases, every Retry exhausted (docs/architecture.md, History events). Measured on this state
# machine's history without retries: 34 events for an execution's start, one round and its end;
# 40 per item besides its segments; 21 per segment. A Task adds 3 events per retry (scheduled,
# started, failed), 9 for the usual 3 retries:
START_EVENTS = 40  # start, acquire (+ 9), first choices
ROUND_EVENTS = 80  # setting, depth, receive, plan, renewal: ~25 + 5 tasks × 9 retry events
# register, validate, write, record, publish, delete: ~40 + 6 × 9 retries + 3 (WriteOutput's extra
# try); the first output call's way there: start 2, visibility 5 + 9, lease 5 + 9, choices 2 + 2 = 34;
# the failure path after the last of them: ~25 + 3 tasks × 9 + 2 (calls spent) = 54;
# 40 + 57 + 34 + 54 = 185
ITEM_EVENTS = 190
# visibility, lease, ProcessObject, choices: 21 + 9 + 9 + ProcessObject's 3 + 6 retries × 3 = 66
SEGMENT_EVENTS = 70
# Each WriteOutput call after the first (the merge of a big file goes on, sluice/results.py):
# count 2, visibility 5 + 9, lease 5 + 9, choice 2, WriteOutput 5 + 9 + 3, choice 2 = 51
OUTPUT_CALL_EVENTS = 55
END_EVENTS = 30  # the release (+ 9) and the execution's end


def worst_item(segments: int, output_calls: int = 0) -> int:
    """History events of one Map item that ran `segments` segments and `output_calls` WriteOutput
    calls after the first, at worst."""
    return ITEM_EVENTS + segments * SEGMENT_EVENTS + output_calls * OUTPUT_CALL_EVENTS


def worst_round(items: int, segments_per_turn: int) -> int:
    """History events of one round of `items` items that each run their whole turn and then every
    WriteOutput call the merge may take, at worst."""
    return ROUND_EVENTS + items * worst_item(segments_per_turn, MAX_OUTPUT_CALLS - 1)


class ItemProgress(BaseModel):
    """One Map item's output: the segment it had reached (0 = none run), WriteOutput calls after the first."""

    segment: int = Field(default=0, ge=0)
    output_calls: int = Field(default=0, ge=0)


class LeaseRequest(BaseModel):
    """DispatcherLease's input (docs/interfaces.md)."""

    operation: Literal["acquire", "renew", "release"]
    execution: str = Field(min_length=1)
    round: int = Field(default=0, ge=0)  # rounds this execution has completed
    # After a round (the renewal between rounds): what its items did, and the limits that bound
    # the next one. A renewal inside an item sends none of them and is not counted.
    items: list[ItemProgress] | None = None
    concurrency_max: int = Field(default=10, ge=1)
    segments_per_turn: int = Field(default=1, ge=1)


class LeaseAnswer(BaseModel):
    """DispatcherLease's output: `acquired: false` ends the execution; so does `budget_left: false`."""

    acquired: bool
    budget_left: bool
    deadline: str | None = None  # ISO-8601 UTC; None when the lease is not ours


NOT_HELD = LeaseAnswer(acquired=False, budget_left=False, deadline=None)


class DispatcherLease:
    def __init__(
        self, table: Any, settings: LeaseSettings, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._table = table  # a boto3 dynamodb Table resource (ControlTable)
        self._settings = settings
        self._clock = clock  # epoch seconds; injectable so tests can move time

    def handle(self, request: LeaseRequest) -> LeaseAnswer:
        if request.operation == "acquire":
            return self.acquire(request.execution)
        if request.operation == "renew":
            return self.renew(request.execution, request.round, request)
        return self.release(request.execution)

    def acquire(self, execution: str) -> LeaseAnswer:
        """Take the lease if it is free or expired; an execution that already holds it keeps it."""
        now = int(self._clock())
        deadline = now + self._settings.execution_time_budget_seconds
        item = {
            "pk": LEASE_KEY,
            "holder": execution,
            "acquired_at": _iso(now),
            "deadline": _iso(deadline),
            "expires_at": self._expiry(now),
            "round": 0,
            "events": START_EVENTS,
        }
        try:
            self._table.put_item(
                Item=item,
                ConditionExpression=Attr("pk").not_exists() | Attr("expires_at").lte(now),
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as error:
            current = condition_failed_item(error) or {}
            if current.get("holder") == execution:
                # A retried acquire of the same execution: same lease, same deadline (no extra budget).
                return self._answer(current, now, rounds_done=int(current.get("round", 0)))
            logger.info(
                "Dispatcher lease held by another execution",
                extra={"holder": current.get("holder"), "expires_at": current.get("expires_at")},
            )
            return NOT_HELD
        return self._answer(item, now, rounds_done=0)

    def renew(self, execution: str, round: int, request: LeaseRequest | None = None) -> LeaseAnswer:
        """Extend the lease if it is still ours; say whether another round fits the budget."""
        now = int(self._clock())
        items = request.items if request is not None else None
        # A retried renewal counts its round twice: an over-count only ends the execution sooner.
        spent = (
            0
            if items is None
            else ROUND_EVENTS + sum(worst_item(i.segment + 1, i.output_calls) for i in items)
        )
        try:
            response = self._table.update_item(
                Key={"pk": LEASE_KEY},
                UpdateExpression=(
                    "SET expires_at = :expires, #round = :round, renewed_at = :now ADD events :spent"
                ),
                ConditionExpression=Attr("holder").eq(execution),
                ExpressionAttributeNames={"#round": "round"},
                ExpressionAttributeValues={
                    ":expires": self._expiry(now),
                    ":round": round,
                    ":now": _iso(now),
                    ":spent": spent,
                },
                ReturnValues="ALL_NEW",
            )
        except ClientError as error:
            condition_failed_item(error)
            logger.warning("Dispatcher lease lost to another execution", extra={"execution": execution})
            return NOT_HELD
        answer = self._answer(response["Attributes"], now, rounds_done=round)
        if items is not None and request is not None and answer.budget_left:
            events = int(response["Attributes"].get("events", 0))
            worst = worst_round(request.concurrency_max, request.segments_per_turn)
            if events + worst + END_EVENTS > EVENT_BUDGET:
                logger.info(
                    "History event budget spent: no further round",
                    extra={"events": events, "worst_round": worst, "budget": EVENT_BUDGET},
                )
                return answer.model_copy(update={"budget_left": False})
        return answer

    def holder(self) -> str | None:
        """The execution holding an unexpired lease, or None: what a wake reads before starting one.

        A consistent read (one read unit): an eventually consistent one could miss a lease taken
        a moment ago and start an execution for nothing, or see one just released and start none.
        """
        item = self._table.get_item(Key={"pk": LEASE_KEY}, ConsistentRead=True).get("Item")
        if not item or int(item.get("expires_at", 0)) <= int(self._clock()):
            return None
        return str(item.get("holder", ""))

    def release(self, execution: str) -> LeaseAnswer:
        """Give the lease up so the next scheduled execution need not wait for it to expire."""
        try:
            self._table.delete_item(Key={"pk": LEASE_KEY}, ConditionExpression=Attr("holder").eq(execution))
        except ClientError as error:
            condition_failed_item(error)
            logger.info("Dispatcher lease was not ours to release", extra={"execution": execution})
        return NOT_HELD

    def _expiry(self, now: int) -> int:
        return now + self._settings.execution_time_budget_seconds + self._settings.lease_margin_seconds

    def _answer(self, item: dict, now: int, *, rounds_done: int) -> LeaseAnswer:
        deadline = str(item["deadline"])
        budget_left = rounds_done < self._settings.max_rounds_per_execution and now < _epoch(deadline)
        return LeaseAnswer(acquired=True, budget_left=budget_left, deadline=deadline)


def _iso(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _epoch(iso: str) -> int:
    return int(datetime.fromisoformat(iso).timestamp())
