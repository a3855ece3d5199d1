"""The downstream API simulator: a real HTTP server standing in for the API Sluice delivers rows to.

It behaves as the real downstream would (docs/interfaces.md, "Downstream API"): a rate limit over a
sliding one-second window (429 with Retry-After above it), a latency distribution, transient 503s,
422 for rows it does not accept, 400 without an Idempotency-Key. It records every call so tests,
`sluice run` and the benchmark can assert what the API actually received: `GET /stats`.

Why the standard library and no web framework: the simulator needs one POST route, three control
routes and exact control over threads and sockets (HTTP/1.1 keep-alive, a deep accept queue, closing
idle keep-alive connections on stop so no thread is left behind). `http.server.ThreadingHTTPServer`
gives all of that in a few lines; a framework would add a dependency and hide the sockets.

Control routes (not recorded as calls): `GET /stats`, `GET /deliveries`, `POST /reset`,
`POST /config` (rate_limit, latency_min, latency_max, error_rate, and an outage: down_status, e.g.
401 or 503 for every call, or drop_connections). Every other POST path is the API.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import logging
import math
import random
import re
import signal
import socket
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

logger = logging.getLogger(__name__)

#: Customers whose email ends with this domain are unknown to the downstream: it answers 422.
UNKNOWN_CUSTOMER_DOMAIN = "@invalid.example"

CONTROL_PATHS = frozenset({"/stats", "/deliveries", "/reset", "/config"})
_RUNTIME_SETTINGS = (
    "rate_limit",
    "latency_min",
    "latency_max",
    "error_rate",
    "down_status",
    "drop_connections",
)
_WHOLE_SETTINGS = {"down_status": int, "drop_connections": bool}  # the others are floats


@dataclass(frozen=True)
class RejectRule:
    """A row whose JSON field `field` matches `pattern` (re.search) is answered `status` + error."""

    field: str
    pattern: str
    error: str
    status: int = HTTPStatus.UNPROCESSABLE_ENTITY

    def matches(self, row: dict[str, Any]) -> bool:
        value = row.get(self.field)
        return value is not None and re.search(self.pattern, str(value)) is not None


UNKNOWN_CUSTOMER_RULE = RejectRule(
    field="customer_email", pattern=re.escape(UNKNOWN_CUSTOMER_DOMAIN) + "$", error="unknown customer"
)


@dataclass(frozen=True)
class ApiSimulatorConfig:
    rate_limit: float = 50.0  # accepted requests per sliding second; 0 = unlimited
    latency_min: float = 0.05  # seconds, uniform between min and max
    latency_max: float = 0.2
    error_rate: float = 0.0  # fraction of admitted requests answered 503
    rejects: tuple[RejectRule, ...] = (UNKNOWN_CUSTOMER_RULE,)
    seed: int | None = None  # reproducible latency/error draws (for sequential callers)
    host: str = "127.0.0.1"
    port: int = 0  # 0 = an ephemeral port; read `.url` after start()
    retry_after_seconds: int = 1  # the Retry-After a 429 carries
    # An outage, switched on and off with POST /config: every API call answered with this status
    # (e.g. 401 for a revoked credential, 503 for a service down; 0 = none), or, with
    # drop_connections, closed without any answer (what a client sees of a server that is gone).
    down_status: int = 0
    drop_connections: bool = False

    def __post_init__(self) -> None:
        if self.rate_limit < 0:
            raise ValueError("rate_limit must be >= 0 (0 = unlimited)")
        if not 0 <= self.latency_min <= self.latency_max:
            raise ValueError("need 0 <= latency_min <= latency_max")
        if not 0 <= self.error_rate <= 1:
            raise ValueError("error_rate must be within 0..1")


def max_in_window(times: Sequence[float], window: float = 1.0) -> int:
    """The most timestamps inside any half-open window [t, t + window): exact, O(n) on sorted input.

    Two pointers over the sorted times: for each right end, the left end advances past every
    timestamp at least `window` older. Two events exactly `window` apart are never in one window,
    the same boundary the rate limiter uses.
    """
    ordered = times if _is_sorted(times) else sorted(times)
    best = 0
    left = 0
    for right, t in enumerate(ordered):
        while t - ordered[left] >= window:
            left += 1
        best = max(best, right - left + 1)
    return best


def _is_sorted(values: Sequence[float]) -> bool:
    return all(a <= b for a, b in itertools.pairwise(values))


class SlidingWindowLimiter:
    """At most `limit` acquisitions in any half-open one-second window (not thread-safe: caller locks).

    A deque of the accepted arrivals of the last second; a rejected arrival is not recorded, so a
    client hammering the API does not lock itself out for longer than its own accepted traffic.
    """

    def __init__(self, limit: float, window: float = 1.0) -> None:
        self.limit = limit
        self.window = window
        self._accepted: deque[float] = deque()

    def try_acquire(self, now: float) -> bool:
        if self.limit <= 0:
            return True
        while self._accepted and now - self._accepted[0] >= self.window:
            self._accepted.popleft()
        if len(self._accepted) >= self.limit:
            return False
        self._accepted.append(now)
        return True

    def clear(self) -> None:
        self._accepted.clear()


def _percentile(ordered: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of sorted values (0 when empty)."""
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


@dataclass
class _Records:
    """Everything the simulator saw since start or the last reset (guarded by the simulator's lock)."""

    arrivals: list[float] = field(default_factory=list)  # clock time of every API request, in order
    accepted: list[float] = field(default_factory=list)  # arrival time of requests answered 2xx
    by_status: dict[int, int] = field(default_factory=dict)
    keys_seen: set[str] = field(default_factory=set)
    deliveries: dict[str, int] = field(default_factory=dict)  # key -> 2xx answers
    ids: dict[str, str] = field(default_factory=dict)  # key -> the id its first delivery got
    service_times: list[float] = field(default_factory=list)  # arrival -> answer, admitted requests


class ApiSimulator:
    """A threaded HTTP server on 127.0.0.1 that behaves like the downstream API and records every call.

    `clock` (monotonic seconds) decides rate limiting and the recorded arrival times; tests pass a
    fake one to exercise the limiter's boundaries exactly. Latency always sleeps in real time.
    """

    def __init__(self, config: ApiSimulatorConfig | None = None, *, clock: Callable[[], float] | None = None):
        self._config = config or ApiSimulatorConfig()
        self._clock = clock or time.monotonic
        self._lock = threading.Lock()
        self._counted = threading.local()  # when this handler thread counted its request's arrival
        self._random = random.Random(self._config.seed)
        self._limiter = SlidingWindowLimiter(self._config.rate_limit)
        self._records = _Records()
        self._started_clock = self._clock()
        self._started_wall = time.time()
        self._stopping = threading.Event()
        self._server: _SimulatorHTTPServer | None = None
        self._serve_thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Self:
        if self._server is not None:
            raise RuntimeError("simulator already started")
        self._stopping.clear()
        self._server = _SimulatorHTTPServer((self._config.host, self._config.port), _Handler, self)
        self.reset()  # stats() count from here, not from construction
        self._serve_thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="apisim-accept",
            daemon=True,
        )
        self._serve_thread.start()
        logger.info("API simulator listening on %s", self.url)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, wake sleeping handlers, close keep-alive connections, join every thread."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()  # handlers sleeping through latency answer at once
        server.shutdown()  # serve_forever returns: no new connections
        server.close_connections(deadline=time.monotonic() + timeout)
        server.server_close()
        if self._serve_thread is not None:
            self._serve_thread.join(timeout)
            self._serve_thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Base URL, e.g. http://127.0.0.1:54321 (the API answers POST on any non-control path)."""
        if self._server is None:
            raise RuntimeError("simulator not started")
        return f"http://{self._config.host}:{self.port}"

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("simulator not started")
        return int(self._server.server_address[1])

    @property
    def config(self) -> ApiSimulatorConfig:
        with self._lock:
            return self._config

    # -- control -----------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget every recorded call and the limiter's window; the clock of `stats()` restarts."""
        with self._lock:
            self._records = _Records()
            self._limiter.clear()
            self._started_clock = self._clock()
            self._started_wall = time.time()

    def configure(self, **changes: Any) -> ApiSimulatorConfig:
        """Change rate_limit, latency_min, latency_max or error_rate while serving."""
        unknown = set(changes) - set(_RUNTIME_SETTINGS)
        if unknown:
            raise ValueError(f"cannot change {sorted(unknown)}; allowed: {list(_RUNTIME_SETTINGS)}")
        with self._lock:
            values: dict[str, Any] = {
                name: _WHOLE_SETTINGS.get(name, float)(value) for name, value in changes.items()
            }
            self._config = dataclasses.replace(self._config, **values)  # validates
            self._limiter.limit = self._config.rate_limit
            return self._config

    def refuse(self, rules: Sequence[RejectRule]) -> None:
        """Replace the rules that refuse rows: a test's outage of one row is a rule with status 503."""
        with self._lock:
            self._config = dataclasses.replace(self._config, rejects=tuple(rules))

    def deliveries(self) -> dict[str, int]:
        """Idempotency-Key -> how many times it was answered 2xx."""
        with self._lock:
            return dict(self._records.deliveries)

    def stats(self) -> dict[str, Any]:
        """What `GET /stats` answers. Copies under the lock, computes outside it."""
        with self._lock:
            records = self._records
            arrivals = list(records.arrivals)
            accepted = list(records.accepted)
            by_status = dict(records.by_status)
            distinct_keys = len(records.keys_seen)
            delivery_counts = list(records.deliveries.values())
            service_times = sorted(records.service_times)
            started_clock, started_wall = self._started_clock, self._started_wall
            rate_limit = self._config.rate_limit
            now = self._clock()
        accepted.sort()  # answers finish out of order; arrivals are appended in order under the lock
        active_seconds = accepted[-1] - accepted[0] if len(accepted) > 1 else 0.0
        first = arrivals[0] if arrivals else None
        last = arrivals[-1] if arrivals else None
        return {
            "requests": len(arrivals),
            "responses_by_status": {str(status): n for status, n in sorted(by_status.items())},
            "throttled": by_status.get(HTTPStatus.TOO_MANY_REQUESTS, 0),
            "accepted": len(accepted),
            "max_requests_in_any_second": max_in_window(arrivals),
            "max_accepted_in_any_second": max_in_window(accepted),
            # n accepted arrivals span n - 1 intervals: evenly paced at R per second gives exactly R
            "accepted_rate": round((len(accepted) - 1) / active_seconds, 3) if active_seconds else 0.0,
            "active_seconds": round(active_seconds, 3),
            "distinct_keys": distinct_keys,
            "delivered_keys": len(delivery_counts),
            "duplicate_deliveries": sum(n - 1 for n in delivery_counts if n > 1),
            "duplicate_keys": sum(1 for n in delivery_counts if n > 1),
            "latency_ms": {
                name: round(_percentile(service_times, q) * 1000, 1)
                for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99), ("max", 1.0))
            },
            "arrivals_per_second": _per_second(arrivals, started_clock),
            "accepted_per_second": _per_second(accepted, started_clock),
            "rate_limit": rate_limit,
            "started_at": round(started_wall, 3),
            "first_request_at": None if first is None else round(started_wall + first - started_clock, 3),
            "last_request_at": None if last is None else round(started_wall + last - started_clock, 3),
            "elapsed_seconds": round(now - started_clock, 3),
        }

    # -- the API -----------------------------------------------------------------------------

    def handle_api_call(self, key: str | None, body: bytes) -> tuple[int, dict[str, str], dict[str, Any]]:
        """Answer one API request: (status, extra headers, JSON body). Called in the handler thread.

        Every answer says in `Server-Timing` how long after counting the arrival it was given, as a
        real API may: Sluice's limiter paces for the lateness of arrivals, and the simulated
        latency comes after the arrival (sluice/ratelimit.py, "Pacing from measured lateness")."""
        status, headers, answer = self._answer_call(key, body)
        worked = time.perf_counter() - self._counted.at
        return status, {**headers, "Server-Timing": f"app;dur={worked * 1000:.1f}"}, answer

    def _answer_call(self, key: str | None, body: bytes) -> tuple[int, dict[str, str], dict[str, Any]]:
        began = time.perf_counter()  # service time is real time, whatever clock the limiter uses
        with self._lock:
            arrived = self._clock()
            self._counted.at = time.perf_counter()
            self._records.arrivals.append(arrived)
            if key:
                self._records.keys_seen.add(key)
            refused = self._outage() or self._throttle(arrived)
            if refused is not None:
                return refused
            config = self._config
            latency = self._random.uniform(config.latency_min, config.latency_max)
            fail = self._random.random() < config.error_rate

        if latency and self._stopping.wait(latency):
            return self._answer(began, HTTPStatus.SERVICE_UNAVAILABLE, {"error": "shutting down"})
        if fail:
            return self._answer(began, HTTPStatus.SERVICE_UNAVAILABLE, {"error": "temporarily unavailable"})
        if not key:
            return self._answer(began, HTTPStatus.BAD_REQUEST, {"error": "missing Idempotency-Key header"})
        refusal = _refusal(body, config.rejects)
        if refusal is not None:
            return self._answer(began, *refusal)
        return self._deliver(arrived, began, key)

    def _throttle(self, arrived: float) -> tuple[int, dict[str, str], dict[str, Any]] | None:
        """429 with Retry-After above the rate limit, or None. Holding the lock."""
        if self._limiter.try_acquire(arrived):
            return None
        self._count(HTTPStatus.TOO_MANY_REQUESTS)
        retry_after = str(self._config.retry_after_seconds)
        return HTTPStatus.TOO_MANY_REQUESTS, {"Retry-After": retry_after}, {"error": "rate limited"}

    def _outage(self) -> tuple[int, dict[str, str], dict[str, Any]] | None:
        """The answer of a simulated outage (status 0: no answer at all), or None. Holding the lock."""
        config = self._config
        status = 0 if config.drop_connections else config.down_status
        if not status and not config.drop_connections:
            return None
        self._count(status)  # a dropped connection is counted under status 0
        return status, {}, {"error": "the API is down (simulated outage)"}

    def _deliver(self, arrived: float, began: float, key: str) -> tuple[int, dict[str, str], dict[str, Any]]:
        with self._lock:
            records = self._records
            count = records.deliveries.get(key, 0) + 1
            records.deliveries[key] = count
            record_id = records.ids.setdefault(key, uuid.uuid4().hex)
            records.accepted.append(arrived)
            # The first delivery creates the record; a replay of the key answers 200 with the same id
            # (and counts as a duplicate delivery: Sluice must never need the API to deduplicate).
            status = HTTPStatus.CREATED if count == 1 else HTTPStatus.OK
            self._count(status)
            records.service_times.append(time.perf_counter() - began)
        body = {"id": record_id, "received_at": round(time.time(), 6), "idempotency_key": key}
        return status, {}, body

    def _answer(
        self, began: float, status: int, body: dict[str, Any]
    ) -> tuple[int, dict[str, str], dict[str, Any]]:
        with self._lock:
            self._count(status)
            self._records.service_times.append(time.perf_counter() - began)
        return status, {}, body

    def _count(self, status: int) -> None:
        by_status = self._records.by_status
        by_status[status] = by_status.get(status, 0) + 1


def _refusal(body: bytes, rules: Sequence[RejectRule]) -> tuple[int, dict[str, Any]] | None:
    """Why the API refuses a row it admitted (status, JSON body), or None to accept it."""
    try:
        row = json.loads(body)
    except ValueError:
        return HTTPStatus.BAD_REQUEST, {"error": "body is not JSON"}
    if not isinstance(row, dict):
        return HTTPStatus.BAD_REQUEST, {"error": "body is not a JSON object"}
    rule = next((rule for rule in rules if rule.matches(row)), None)
    return None if rule is None else (rule.status, {"error": rule.error})


def _per_second(times: Sequence[float], start: float) -> list[int]:
    """Counts per whole second since `start` (index 0 = the first second), for charts. A time
    before `start` (a request that arrived before a reset and was answered after it) counts in
    the first second."""
    if not times:
        return []
    counts = [0] * (max(0, int(max(times) - start)) + 1)
    for t in times:
        counts[max(0, int(t - start))] += 1
    return counts


class _SimulatorHTTPServer(ThreadingHTTPServer):
    """One thread per connection, tracked so stop() can close idle keep-alive sockets and join them."""

    daemon_threads = True
    request_queue_size = 1024  # the default 5 refuses connections when hundreds arrive at once

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], sim: ApiSimulator):
        self.simulator = sim
        self._connections: dict[socket.socket, threading.Thread] = {}
        self._connections_lock = threading.Lock()
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(
            target=self._serve_connection, args=(request, client_address), name="apisim-conn", daemon=True
        )
        with self._connections_lock:
            self._connections[request] = thread
        thread.start()

    def _serve_connection(self, request: socket.socket, client_address: Any) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            with self._connections_lock:
                self._connections.pop(request, None)

    def close_connections(self, deadline: float) -> None:
        with self._connections_lock:
            open_connections = list(self._connections.items())
        for sock, _ in open_connections:
            # Wakes a handler blocked reading the next keep-alive request: it sees EOF and returns.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for _, thread in open_connections:
            thread.join(max(0.0, deadline - time.monotonic()))

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that went away (or our own shutdown) is not an error worth a traceback.
        if isinstance(sys.exception(), OSError):
            return
        logger.exception("API simulator: error serving %s", client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so clients' connection pools reuse sockets
    server_version = "SluiceApiSimulator/1.0"
    timeout = 60  # an idle keep-alive connection is closed after this many seconds
    # Headers and body go out in two writes; with Nagle on, the client's delayed ACK adds ~40 ms each.
    disable_nagle_algorithm = True
    server: _SimulatorHTTPServer

    def do_POST(self) -> None:
        body = self._read_body()  # always drain it, or the next request on the connection is garbage
        path = self.path.split("?", 1)[0]
        sim = self.server.simulator
        if path == "/reset":
            sim.reset()
            self._send_json(HTTPStatus.OK, {"reset": True})
        elif path == "/config":
            self._configure(body)
        elif path in CONTROL_PATHS:
            self._send_json(HTTPStatus.METHOD_NOT_ALLOWED, {"error": f"use GET {path}"})
        else:
            status, headers, answer = sim.handle_api_call(self.headers.get("Idempotency-Key"), body)
            if status == 0:  # a simulated dead server: the connection closes without an answer
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
                return
            self._send_json(status, answer, headers)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        sim = self.server.simulator
        if path == "/stats":
            self._send_json(HTTPStatus.OK, sim.stats())
        elif path == "/deliveries":
            self._send_json(HTTPStatus.OK, sim.deliveries())
        else:
            self._send_json(HTTPStatus.NOT_FOUND, {"error": "GET serves /stats and /deliveries only"})

    def _configure(self, body: bytes) -> None:
        try:
            changes = json.loads(body or b"{}")
            if not isinstance(changes, dict):
                raise TypeError("expected a JSON object")
            config = self.server.simulator.configure(**changes)
        except (ValueError, TypeError) as error:
            self._send_json(HTTPStatus.BAD_REQUEST, {"error": str(error)})
            return
        self._send_json(HTTPStatus.OK, {name: getattr(config, name) for name in _RUNTIME_SETTINGS})

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _send_json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s " + format, self.address_string(), *args)


# -- standalone --------------------------------------------------------------------------------


def _latency_range(text: str) -> tuple[float, float]:
    low, sep, high = text.partition("-")
    return (float(low), float(high)) if sep else (float(low), float(low))


def _reject_rule(text: str) -> RejectRule:
    field_name, sep, pattern = text.partition("=")
    if not sep or not field_name or not pattern:
        raise argparse.ArgumentTypeError("expected FIELD=REGEX")
    return RejectRule(field=field_name, pattern=pattern, error=f"rejected {field_name}")


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sluice_cli.apisim", description="Run the downstream API simulator until Ctrl-C."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    parser.add_argument("--rate", type=float, default=50.0, help="requests per second, 0 = unlimited")
    parser.add_argument("--latency", type=_latency_range, default=(0.05, 0.2), help="seconds, MIN-MAX")
    parser.add_argument("--error-rate", type=float, default=0.0, help="fraction answered 503")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--reject",
        type=_reject_rule,
        action="append",
        default=None,
        help=f"FIELD=REGEX answered 422, repeatable (default: customer_email ends {UNKNOWN_CUSTOMER_DOMAIN})",
    )
    return parser


def main(argv: Sequence[str] | None = None, *, stop: threading.Event | None = None) -> int:
    """Serve until SIGINT/SIGTERM (or until `stop` is set, when given), then print the stats."""
    args = build_arg_parser().parse_args(argv)
    config = ApiSimulatorConfig(
        rate_limit=args.rate,
        latency_min=args.latency[0],
        latency_max=args.latency[1],
        error_rate=args.error_rate,
        rejects=tuple(args.reject) if args.reject else (UNKNOWN_CUSTOMER_RULE,),
        seed=args.seed,
        host=args.host,
        port=args.port,
    )
    previous: dict[signal.Signals, Any] = {}
    if stop is None:
        stop = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, lambda *_: stop.set())
    try:
        with ApiSimulator(config) as sim:
            print(f"API simulator on {sim.url}  (GET {sim.url}/stats)", flush=True)
            stop.wait()
            print(json.dumps(sim.stats(), indent=2), flush=True)
    finally:
        for restored, handler in previous.items():
            signal.signal(restored, handler)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
