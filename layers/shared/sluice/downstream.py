"""The downstream API client: one request per row, retried, paced by the shared rate limiter.

Protocol (docs/interfaces.md): `{API_METHOD} {API_URL}` (POST, PUT or PATCH; `{column}`
placeholders in the URL filled from the row, URL-encoded: `RequestTarget`) with the transformed
row as JSON, headers `Content-Type: application/json`, `Idempotency-Key` (stable for a row of an
object version, so every retry and every re-delivery after a crash carries the same key and the
API can deduplicate), API_HEADERS' static headers and the credential (apiauth.py). Answers:
- 2xx: delivered; the JSON answer is kept with the row.
- 429, 408, 5xx, timeouts, connection errors: retried with exponential backoff and full jitter
  (a random wait in [0, min(max, base × 2^retry)]), at most API_MAX_ATTEMPTS attempts in all.
  Exhausted: TransientDownstreamError.
- 429: the API's limit is lower than the stack paces at, for now (a quota shared with another
  client): the whole stack steps its rate down and pauses (ratelimit.RateLimiter.throttled), and
  the row waits for it; not a failed attempt.
- an answer with `Retry-After` (seconds or an HTTP-date): the whole stack pauses until then
  (ratelimit.RateLimiter.pause, one write to the shared rate item) and the row waits for it; it
  is not a failed attempt, however long the pause (the segment's stop event ends the wait).
- 401 with an ApiAuthType: the secret is re-read (apiauth.ApiAuth.rejected); if the credential
  changed (rotated), the row is sent again at once with it, not counted as a failed attempt.
- 401 (after that re-read), 403, 404, 405, 410, or no credential to send (the secret unreadable
  or malformed): the API's credential or route is wrong, not the row: the downstream is marked
  unhealthy stack-wide (health.py: the breaker's reason and alert say which), and the row waits
  for recovery (each probe's 401 re-reads the secret), then is sent again with the same
  Idempotency-Key. No row is rejected or failed for it. So do 5xx and connection errors once
  they are sustained.
- any other status: the row is rejected with "api {status}: {body}".

Batches (API_BATCH_SIZE > 1, `deliver_batch`): up to that many rows in one request, a JSON array
of their payloads in file order, one rate slot, `Idempotency-Key` = `batch_key` of the rows' own
keys. The whole request is answered as above (a retry re-sends the same batch with the same
key; a rejecting 4xx rejects each of its rows with that reason). A 2xx must carry one result per
row, in order: a JSON array of objects with an HTTP-like `status` (2xx: the row is accepted, the
object kept as its answer; any other: the row is rejected, `api item {status}: {object}`).
Another 2xx body rejects every row of the batch saying so: nothing is counted delivered that the
API did not confirm.

No request outlives its segment: a caller that gives a `deadline` (delivery.py: half the safety
margin after the segment stops taking rows, so that the other half is its flush's) bounds each
request's connect and read by the time left until then, below ApiTimeoutSeconds when that is
shorter. A request cut short by it is abandoned, not failed (DeliveryAbandoned): the API did
nothing wrong. Its row is sent again by the next segment, with the same Idempotency-Key.

Every attempt first takes a slot from the rate limiter, and tells it when the answer came
(`finished`: the pacing measures send → first byte). That is why the transports never retry
on their own (urllib3 `retries=False`): a retry inside urllib3 would be a request the limiter
never saw. Before taking a slot, the HTTP transport makes sure a connection is open (`ready`),
so a connection's setup never makes an arrival late.

Two transports answer `send(body, headers, url)`: `HttpTransport` (urllib3, pooled, thread-safe) and
`SimulatedApi` (seed 002: latency uniform in [min, max] seconds, a failure rate answered as 503),
used in-process when API_MODE is simulated.
"""

import email.utils
import hashlib
import json
import random
import re
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol
from urllib.parse import quote

import urllib3

from sluice.apiauth import ApiAuth, AuthError, auth_from_settings
from sluice.health import SYSTEMIC_STATUSES, DownstreamHealth
from sluice.models import ObjectRef
from sluice.observability import MetricUnit, logger, metrics
from sluice.ratelimit import Clock, Interrupted, SystemClock, shared_limiter, sleep_until
from sluice.schemas.base import wire_body
from sluice.settings import URL_PLACEHOLDER, ProcessSettings

RETRYABLE_STATUSES = frozenset({408, 429})
LATENCY_METRIC = "ApiLatency"  # ms, one value per request the API answered
THROTTLES_METRIC = "ApiThrottles"  # requests answered 429
BODY_SNIPPET_CHARS = 200

# Powertools' Metrics is not thread-safe (add_metric reads, appends and may flush a shared dict);
# worker threads add through this lock.
_metrics_lock = threading.Lock()


def add_metric(name: str, unit: MetricUnit, value: float) -> None:
    with _metrics_lock:
        metrics.add_metric(name=name, unit=unit, value=value)


# The object metadata (x-amz-meta-sluice-resend-token) that makes every row of an upload new to
# the API: a user who wants the same bytes sent again sets it to a value not used before.
RESEND_METADATA = "sluice-resend-token"


def idempotency_key(
    obj: ObjectRef,
    row: int,
    record: Mapping[str, str],
    *,
    resend_token: str = "",
    identity: Sequence[Any] | None = None,
) -> str:
    """A row's Idempotency-Key (docs/interfaces.md, Idempotency-Key), 32 hex characters.

    By default the row's content identity: sha256 of the JSON list [bucket, key, row, sha256(JSON
    of the record), resend_token], so the same bytes at the same row of the same key carry the same
    key under any version id (a re-upload, an SDK retry, an in-place copy), a changed row a new one.
    When the schema declares key columns, their values as sent (`identity`) are the row's identity
    wherever it comes from: ["key", identity, resend_token], so the same order in another file, at
    another row or with another amount carries the same key. Needs no read of the whole object.
    JSON lists, so no value can borrow another's delimiter.
    """
    if identity is not None:
        declared = json.dumps(["key", list(identity), resend_token])
        return hashlib.sha256(declared.encode()).hexdigest()[:32]
    content = hashlib.sha256(json.dumps(record).encode()).hexdigest()
    located = json.dumps([obj.bucket, obj.key, row, content, resend_token])
    return hashlib.sha256(located.encode()).hexdigest()[:32]


def batch_key(keys: list[str]) -> str:
    """A batch's Idempotency-Key: sha256 of the JSON list of its rows' keys, 32 hex characters.
    The same rows in the same order carry the same key (a retry, a re-run from the checkpoint)."""
    return hashlib.sha256(json.dumps(keys).encode()).hexdigest()[:32]


class TransientDownstreamError(RuntimeError):
    """The API kept failing for a row: the segment fails and is retried by the state machine."""


class DeliveryAbandoned(Exception):
    """The caller stopped waiting (its segment is out of time) before the row got an answer.

    Not a failure: the row is simply not delivered yet; the next segment sends it again.
    """


WARM_CONNECT_SECONDS = 2.0  # the longest a connection opened ahead of a slot may take


class TransportError(Exception):
    """No HTTP answer: a timeout or a connection error."""


@dataclass(frozen=True, slots=True)
class ApiResponse:
    status: int
    headers: Mapping[str, str]
    body: bytes
    # the API's own time after the request arrived, as it declares it (Server-Timing): no lateness
    answer_seconds: float = 0.0


class Pacer(Protocol):
    """Blocks until the caller may send one request (ratelimit.RateLimiter)."""

    def acquire(self, stop: threading.Event | None = None, order: int | None = None) -> float: ...

    def pause(self, until: float) -> None: ...

    def throttled(self, slot: float, retry_after: float | None = None) -> float: ...

    def finished(self, sent_at: float, arrived_by: float | None) -> None: ...

    def give_back(self) -> None: ...


class Transport(Protocol):
    def send(
        self, body: bytes, headers: Mapping[str, str], url: str | None = None, timeout: float | None = None
    ) -> ApiResponse:
        """One request; `timeout`, when given, shortens the transport's own (the segment's time left)."""
        ...


class RowUrlError(ValueError):
    """The row cannot fill ApiUrl's placeholders: the row's reject reason."""


@dataclass(frozen=True)
class RequestTarget:
    """ApiUrl with its `{column}` placeholders, each filled from the row's column, URL-encoded
    (every character but unreserved ones, "/" included: a value is one path segment or query value)."""

    template: str
    columns: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "columns", tuple(dict.fromkeys(URL_PLACEHOLDER.findall(self.template))))

    def url(self, record: Mapping[str, str]) -> str | None:
        """The row's URL; None when ApiUrl has no placeholder (the transport's own URL)."""
        if not self.columns:
            return None
        values = {}
        for column in self.columns:
            if column not in record:
                raise RowUrlError(f"ApiUrl names {{{column}}}, which is not a column of this file")
            if not (value := record[column].strip()):
                raise RowUrlError(f"{column}: is empty, and ApiUrl needs it ({{{column}}})")
            values[column] = quote(value, safe="")
        return URL_PLACEHOLDER.sub(lambda found: values[found.group(1)], self.template)


_SERVER_TIMING_DURATION = re.compile(r";\s*dur=([0-9]+(?:\.[0-9]+)?)", re.IGNORECASE)


def declared_answer_seconds(server_timing: str | None) -> float:
    """The time the API says it worked on the request after it arrived: the largest `dur` of its
    Server-Timing header (W3C; milliseconds), 0 without one. The largest, not the sum: metrics may
    be parts of one another, and subtracting too little only makes the pacing more careful."""
    durations = [float(value) for value in _SERVER_TIMING_DURATION.findall(server_timing or "")]
    return max(durations, default=0.0) / 1000


class HttpTransport:
    def __init__(self, url: str, *, pool_size: int, timeout_seconds: float, method: str = "POST"):
        self._url = url
        self._method = method
        self._timeout = timeout_seconds
        # block=True: never more connections than worker threads; retries=False: see the module doc.
        self._pool = urllib3.PoolManager(
            maxsize=pool_size,
            block=True,
            retries=False,
            timeout=urllib3.Timeout(total=timeout_seconds),
        )

    def ready(self, within: float | None = None) -> None:
        """Open a connection to the API now if the one a request will take is not open, so the
        request's arrival is never late by a TCP (or TLS) handshake. urllib3 opens connections
        lazily and has no public "warm up"; the pool's own checkout is used for it. The connect
        takes at most WARM_CONNECT_SECONDS, and at most `within` (the segment's time left)."""
        if within is not None and within <= 0:
            return  # no time for a request either
        pool = self._pool.connection_from_url(self._url)
        conn = pool._get_conn()
        timeout = conn.timeout
        try:
            if not conn.is_connected:
                # Bounded on its own: an API that is gone must not hold a worker for the request
                # timeout before its slot (the segment's stop is only looked at between waits).
                bounds = [WARM_CONNECT_SECONDS, self._timeout, *([] if within is None else [within])]
                conn.timeout = max(0.001, min(bounds))
                conn.connect()
        except (OSError, urllib3.exceptions.HTTPError):
            conn.close()  # the request will report the failure itself
        finally:
            conn.timeout = timeout
            pool._put_conn(conn)

    def send(
        self, body: bytes, headers: Mapping[str, str], url: str | None = None, timeout: float | None = None
    ) -> ApiResponse:
        # urllib3's total: connect, then each read waits at most what the connect left of it
        seconds = self._timeout if timeout is None else max(0.001, min(self._timeout, timeout))
        try:
            response = self._pool.request(
                self._method,
                url or self._url,
                body=body,
                headers=dict(headers),
                retries=False,
                redirect=False,
                timeout=urllib3.Timeout(total=seconds),
            )
        except urllib3.exceptions.HTTPError as error:
            raise TransportError(f"{type(error).__name__}: {error}") from error
        return ApiResponse(
            response.status,
            response.headers,
            response.data,
            answer_seconds=declared_answer_seconds(response.headers.get("Server-Timing")),
        )


class SimulatedApi:
    """The downstream of seed 002, in-process: slow (uniform latency), sometimes failing (503)."""

    def __init__(
        self,
        *,
        latency_min_seconds: float,
        latency_max_seconds: float,
        failure_rate: float,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ):
        self._low, self._high = sorted((latency_min_seconds, latency_max_seconds))
        self._failure_rate = failure_rate
        self._clock = clock or SystemClock()
        self._rng = rng or random.Random()

    def send(
        self, body: bytes, headers: Mapping[str, str], url: str | None = None, timeout: float | None = None
    ) -> ApiResponse:
        latency = self._rng.uniform(self._low, self._high)  # all of it the API's own time
        if timeout is not None and latency > timeout:  # the segment's time left is shorter
            self._clock.sleep_until(self._clock.now() + max(0.0, timeout))
            raise TransportError(f"simulated: no answer within {timeout:.1f} s")
        self._clock.sleep_until(self._clock.now() + latency)
        if self._rng.random() < self._failure_rate:
            return ApiResponse(503, {}, b'{"error": "simulated failure"}', answer_seconds=latency)
        key = headers.get("Idempotency-Key", "")
        answer = {"status": "accepted", "id": f"sim-{key[:16]}"}
        return ApiResponse(
            200, {"Content-Type": "application/json"}, json.dumps(answer).encode(), answer_seconds=latency
        )


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 5
    backoff_base_seconds: float = 0.5
    backoff_max_seconds: float = 20.0

    def backoff(self, retry: int, rng: random.Random) -> float:
        """Full jitter for the `retry`-th retry (1-based)."""
        return rng.uniform(0, min(self.backoff_max_seconds, self.backoff_base_seconds * 2 ** (retry - 1)))


@dataclass(frozen=True, slots=True)
class Delivery:
    """A row's fate downstream: `answer` when accepted, `reason` when rejected."""

    accepted: bool
    answer: Any = None
    reason: str | None = None
    attempts: int = 1


class DownstreamClient:
    def __init__(
        self,
        transport: Transport,
        limiter: Pacer,
        *,
        policy: RetryPolicy | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        health: DownstreamHealth | None = None,
        auth: ApiAuth | None = None,
        headers: Mapping[str, str] | None = None,
        target: RequestTarget | None = None,
    ):
        self._transport = transport
        self._auth = auth
        self._static_headers = dict(headers or {})
        self.target = target or RequestTarget("")
        self._limiter = limiter
        self.health = health
        self._policy = policy or RetryPolicy()
        self._clock = clock or SystemClock()
        self._rng = rng or random.Random()
        self._answer_time = threading.local()  # the last attempt's answer time, per worker thread

    def deliver(  # noqa: PLR0912, PLR0915 - one loop reads best as one function: each branch is an answer's kind
        self,
        payload: Mapping[str, Any] | bytes,
        key: str,
        *,
        url: str | None = None,
        stop: threading.Event | None = None,
        order: int | None = None,
        deadline: float | None = None,
    ) -> Delivery:
        """POST one row until it is accepted or rejected; TransientDownstreamError if neither.

        Once `stop` is set no retry starts and no wait goes on (DeliveryAbandoned): a segment
        running out of time waits for the requests on the wire, not for backoffs, rate slots,
        pauses or a downstream outage. An attempt made while the downstream is unhealthy, or
        answered with a Retry-After (which pauses the whole stack), does not count against the
        row's attempts: the row waits for the API instead of failing. `order` (the row's number)
        puts rows waiting for rate slots at once in file order. `payload` may come encoded already
        (RowResult.body, so a row is serialised once, not per attempt and again here). `url` is
        the row's own (RequestTarget.url), None for the transport's. `deadline` (time.monotonic())
        is when the segment's requests must have ended: no request outlives it, whatever
        ApiTimeoutSeconds says; one it cuts short, or that would start after it, is abandoned
        (DeliveryAbandoned), not failed: the API is not to blame, so neither the row's attempts
        nor the breaker count it.
        """
        body = payload if isinstance(payload, bytes) else wire_body(payload)
        headers = {**self._static_headers, "Content-Type": "application/json", "Idempotency-Key": key}
        problem = ""
        attempt = sent = 0  # failed attempts that count against the row; requests sent
        reauthed = False  # the last attempt was sent again after a 401 changed the credential
        while True:
            if sent:
                _unless_stopped(stop, sent + 1, key, problem)
            try:
                # Once admitted, a row goes out even if the segment stops meanwhile: every row held
                # for the downstream goes, or none does, so no row is delivered past an abandoned one
                # (only a row whose deadline has passed stays back: no answer could come in time).
                probe = self.health.admit(stop) if self.health is not None else False
                slot = self._ready_slot(stop, order, _time_left(deadline))
            except Interrupted as error:
                raise DeliveryAbandoned(f"stopped before attempt {sent + 1}, key {key}: {problem}") from error
            if (left := _time_left(deadline)) is not None and left <= 0:
                self._limiter.finished(self._clock.now(), None)  # the permit back; nothing was sent
                raise DeliveryAbandoned(f"out of time before attempt {sent + 1}, key {key}: {problem}")
            sent += 1
            outcome = self._timed_attempt(body, headers, url, reauthed=reauthed, timeout=left)
            reauthed = False
            if isinstance(outcome, Delivery):
                if self.health is not None:
                    self.health.answered(probe=probe)
                return replace(outcome, attempts=sent)
            problem = outcome.problem
            if not outcome.answered and (left := _time_left(deadline)) is not None and left <= 0:
                # cut short by the segment's deadline (or failing just then): the next segment sends it
                raise DeliveryAbandoned(f"no answer before the segment's deadline, key {key}: {problem}")
            if outcome.reauth:  # the secret was rotated: send again with the new one, not an attempt
                reauthed = True
                continue
            if outcome.systemic:
                if self.health is None:  # nobody to tell: the row carries the refusal
                    return Delivery(accepted=False, reason=problem, attempts=sent)
                self.health.refused(problem)
                add_metric("ApiRetries", MetricUnit.Count, 1)  # an error to scaling.py: no growth
                continue  # admit() waits for the downstream to recover
            if outcome.throttled and self.health is not None:
                self.health.answered(probe=probe)  # a 429 is an API at work, not an API down
            elif self.health is not None and self.health.failed(problem, key, probe=probe):
                add_metric("ApiRetries", MetricUnit.Count, 1)
                continue
            if outcome.throttled or outcome.retry_after is not None:
                # Too fast for the API now (429: the whole stack steps down and pauses), or the API
                # said when (Retry-After): nobody in the stack sends before then (the shared item),
                # and this row waits for it rather than failing.
                until = self._hold_back(slot, outcome)
                add_metric("ApiRetries", MetricUnit.Count, 1)
                self._wait(until, stop, sent, key, problem)
                continue
            attempt += 1
            if attempt >= self._policy.max_attempts:
                if self.health is not None and self.health.gave_up(problem):
                    add_metric("ApiRetries", MetricUnit.Count, 1)
                    continue  # an outage, not this row: it waits for the downstream
                raise TransientDownstreamError(
                    f"api still failing after {sent} attempts, key {key}: {problem}"
                )
            _unless_stopped(stop, sent + 1, key, problem)  # no backoff slept for nothing
            add_metric("ApiRetries", MetricUnit.Count, 1)
            logger.debug("retrying a row", extra={"key": key, "attempt": sent, "problem": problem})
            self._wait(self._clock.now() + self._policy.backoff(attempt, self._rng), stop, sent, key, problem)

    def idle(self) -> None:
        """Nothing more to send for now (a segment ended): rate slots held go back to the stack."""
        self._limiter.give_back()

    def _ready_slot(self, stop: threading.Event | None, order: int | None, within: float | None) -> float:
        """A connection open (so its setup cannot make the arrival late), then the rate slot."""
        # Not while the downstream is unhealthy: a probe's arrival is not paced to the limit.
        if isinstance(self._transport, HttpTransport) and not (
            self.health is not None and self.health.seen_open
        ):
            self._transport.ready(within)
        return self._limiter.acquire(stop, order)

    def _timed_attempt(
        self,
        body: bytes,
        headers: Mapping[str, str],
        url: str | None,
        *,
        reauthed: bool,
        timeout: float | None,
    ) -> "Delivery | _Failure":
        """One attempt; its trip is told to the limiter, which paces for its spread: send → first
        byte, less the time the API declares it worked after the arrival (Server-Timing)."""
        sent_at = self._clock.now()
        self._answer_time.seconds = 0.0
        outcome: Delivery | _Failure = _Failure("no answer", answered=False)
        try:
            outcome = self._attempt(body, headers, url, reauthed=reauthed, timeout=timeout)
        finally:
            answered = isinstance(outcome, Delivery) or outcome.answered
            # max: the answer time is real seconds, the clock may be a test's manual one
            arrived_by = max(sent_at, self._clock.now() - self._answer_time.seconds) if answered else None
            self._limiter.finished(sent_at, arrived_by)
        return outcome

    def _hold_back(self, slot: float, outcome: "_Failure") -> float:
        """Until when the stack holds back after a 429 or a Retry-After (one shared write or two)."""
        if outcome.throttled:
            return self._limiter.throttled(slot, outcome.retry_after)
        until = self._clock.now() + (outcome.retry_after or 0.0)
        self._limiter.pause(until)
        return until

    def deliver_batch(
        self,
        bodies: list[bytes],
        keys: list[str],
        *,
        stop: threading.Event | None = None,
        order: int | None = None,
        deadline: float | None = None,
    ) -> list[Delivery]:
        """Several rows in one request (module doc, Batches): each row's Delivery, in order."""
        delivery = self.deliver(
            b"[" + b",".join(bodies) + b"]", batch_key(keys), stop=stop, order=order, deadline=deadline
        )
        if not delivery.accepted:
            return [delivery] * len(keys)
        results = delivery.answer
        if not (
            isinstance(results, list)
            and len(results) == len(keys)
            and all(isinstance(item, dict) and isinstance(item.get("status"), int) for item in results)
        ):
            answer = _snippet(json.dumps(results).encode())
            reason = (
                f"api answer to a batch of {len(keys)} rows is not a JSON array of {len(keys)} results "
                f'with a "status" each (docs/interfaces.md, Batches): {answer}'
            )
            return [Delivery(accepted=False, reason=reason, attempts=delivery.attempts)] * len(keys)
        return [
            Delivery(accepted=True, answer=item, attempts=delivery.attempts)
            if 200 <= item["status"] < 300
            else Delivery(
                accepted=False,
                reason=f"api item {item['status']}: {_snippet(json.dumps(item).encode())}",
                attempts=delivery.attempts,
            )
            for item in results
        ]

    def _wait(self, until: float, stop: threading.Event | None, sent: int, key: str, problem: str) -> None:
        try:
            sleep_until(self._clock, until, stop)
        except Interrupted as error:
            raise DeliveryAbandoned(f"stopped before attempt {sent + 1}, key {key}: {problem}") from error

    def _attempt(
        self,
        body: bytes,
        headers: Mapping[str, str],
        url: str | None,
        *,
        reauthed: bool,
        timeout: float | None,
    ) -> "Delivery | _Failure":
        """One request: a final Delivery, or what went wrong."""
        fingerprint = ""
        try:
            if self._auth is not None:
                credential, fingerprint = self._auth.current()
                headers = {**headers, **credential}
            started = time.perf_counter()
            response = self._transport.send(body, headers, url, timeout)
        except (TransportError, AuthError) as error:
            return _Failure.of(error)
        self._answer_time.seconds = response.answer_seconds
        add_metric(LATENCY_METRIC, MetricUnit.Milliseconds, round((time.perf_counter() - started) * 1000, 1))
        status = response.status
        if 200 <= status < 300:
            return Delivery(accepted=True, answer=_answer(response.body))
        problem = f"api {status}: {_snippet(response.body)}"
        if status == 429:
            add_metric(THROTTLES_METRIC, MetricUnit.Count, 1)
        if status in RETRYABLE_STATUSES or status >= 500:
            retry_after = _retry_after(response.headers.get("Retry-After"), self._clock.now())
            return _Failure(problem, retry_after=retry_after, throttled=status == 429)
        if status == 401 and self._auth is not None:
            return self._unauthorized(self._auth, problem, fingerprint, reauthed=reauthed)
        if status in SYSTEMIC_STATUSES:
            return _Failure(problem, systemic=True)
        return Delivery(accepted=False, reason=problem)

    @staticmethod
    def _unauthorized(auth: ApiAuth, problem: str, fingerprint: str, *, reauthed: bool) -> "_Failure":
        """A 401: send again if re-reading the secret changed the credential, else systemic."""
        if reauthed:
            return _Failure(
                f"{problem} (with the {auth.kind} credential just re-read from its secret)", systemic=True
            )
        try:
            if auth.rejected(fingerprint):
                return _Failure(problem, reauth=True)
        except AuthError as error:
            return _Failure(f"{problem}; re-reading the credential: {error.problem}", systemic=True)
        return _Failure(
            f"{problem} (the {auth.kind} credential re-read from its secret is unchanged)", systemic=True
        )


@dataclass(frozen=True, slots=True)
class _Failure:
    """An attempt that did not settle the row."""

    problem: str
    retry_after: float | None = None  # seconds, from the answer's Retry-After
    throttled: bool = False  # 429
    systemic: bool = False  # 401/403/404/405/410: the API's credential or route, not the row
    answered: bool = True  # False: no HTTP answer (a timeout, a connection error)
    reauth: bool = False  # a 401, and the secret re-read holds another credential: send again

    @classmethod
    def of(cls, error: TransportError | AuthError) -> "_Failure":
        """No answer (a timeout, a refused connection), or no credential to send."""
        if isinstance(error, AuthError):
            return cls(f"api credential: {error.problem}", systemic=not error.transient, answered=False)
        return cls(str(error), answered=False)


def _time_left(deadline: float | None) -> float | None:
    """Seconds until `deadline` (time.monotonic()), None when there is none."""
    return None if deadline is None else deadline - time.monotonic()


def _unless_stopped(stop: threading.Event | None, attempt: int, key: str, problem: str) -> None:
    if stop is not None and stop.is_set():
        raise DeliveryAbandoned(f"stopped before attempt {attempt}, key {key}: {problem}")


def _answer(body: bytes) -> Any:
    if not body:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return _snippet(body)


def _snippet(body: bytes) -> str:
    text = " ".join(body.decode("utf-8", errors="replace").split())
    return text[:BODY_SNIPPET_CHARS] + ("…" if len(text) > BODY_SNIPPET_CHARS else "")


def _retry_after(value: str | None, now: float) -> float | None:
    """Retry-After in seconds from now: delta-seconds or an HTTP-date; None when absent or garbled."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


# Rows the simulated API accepted (API_MODE=simulated): counted "delivered", yet none left the stack.
SIMULATED_DELIVERIES_METRIC = "SimulatedDeliveries"


class _CountedSimulation:
    """The simulated API, each accepted answer counted in SIMULATED_DELIVERIES_METRIC."""

    def __init__(self, api: Transport) -> None:
        self._api = api

    def send(
        self, body: bytes, headers: Mapping[str, str], url: str | None = None, timeout: float | None = None
    ) -> ApiResponse:
        response = self._api.send(body, headers, url, timeout)
        if 200 <= response.status < 300:
            add_metric(SIMULATED_DELIVERIES_METRIC, MetricUnit.Count, 1)
        return response


def client_from_settings(settings: ProcessSettings, control_table: Any) -> DownstreamClient:
    """ProcessObject's client: HTTP to API_URL (API_MODE=http), or seed 002's simulated API
    (API_MODE=simulated, counted in SIMULATED_DELIVERIES_METRIC); paced on the stack's shared
    rate bucket in `control_table` (a boto3 Table resource). ProcessSettings has already refused
    a choice the stage does not allow."""
    transport: Transport
    if settings.api_mode == "http":
        transport = HttpTransport(
            settings.api_url,
            pool_size=settings.api_concurrency,
            timeout_seconds=settings.api_timeout_seconds,
            method=settings.api_method,
        )
    else:
        transport = _CountedSimulation(
            SimulatedApi(
                latency_min_seconds=settings.simulated_latency_min_seconds,
                latency_max_seconds=settings.simulated_latency_max_seconds,
                failure_rate=settings.simulated_failure_rate,
            )
        )
    policy = RetryPolicy(
        max_attempts=settings.api_max_attempts,
        backoff_base_seconds=settings.api_backoff_base_seconds,
        backoff_max_seconds=settings.api_backoff_max_seconds,
    )
    return DownstreamClient(
        transport,
        shared_limiter(
            control_table,
            policy=settings.api_policy,
            lateness_seconds=settings.api_rate_lateness_seconds,
            max_in_flight=settings.api_in_flight_per_invocation,
            metric=add_metric,
        ),
        policy=policy,
        auth=auth_from_settings(settings),
        headers=settings.extra_headers,
        target=RequestTarget(settings.api_url if settings.api_mode == "http" else ""),
    )
