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
`round` and `renewed_at` after a renewal.
"""

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

from boto3.dynamodb.conditions import Attr
from botocore.exceptions import ClientError
from pydantic import BaseModel, Field

from sluice.ddb import condition_failed_item
from sluice.observability import logger
from sluice.settings import LeaseSettings

LEASE_KEY = "lease#dispatcher"


class LeaseRequest(BaseModel):
    """DispatcherLease's input (docs/interfaces.md)."""

    operation: Literal["acquire", "renew", "release"]
    execution: str = Field(min_length=1)
    round: int = Field(default=0, ge=0)  # rounds this execution has completed


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
            return self.renew(request.execution, request.round)
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

    def renew(self, execution: str, round: int) -> LeaseAnswer:
        """Extend the lease if it is still ours; say whether another round fits the budget."""
        now = int(self._clock())
        try:
            response = self._table.update_item(
                Key={"pk": LEASE_KEY},
                UpdateExpression="SET expires_at = :expires, #round = :round, renewed_at = :now",
                ConditionExpression=Attr("holder").eq(execution),
                ExpressionAttributeNames={"#round": "round"},
                ExpressionAttributeValues={
                    ":expires": self._expiry(now),
                    ":round": round,
                    ":now": _iso(now),
                },
                ReturnValues="ALL_NEW",
            )
        except ClientError as error:
            condition_failed_item(error)
            logger.warning("Dispatcher lease lost to another execution", extra={"execution": execution})
            return NOT_HELD
        return self._answer(response["Attributes"], now, rounds_done=round)

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
