"""A local Lambda service: every function's real handler in its own worker processes.

Each worker is `python -m awslambdaric <Handler>`, Lambda's own runtime interface client (the
bootstrap Lambda runs: handler import, context object, error format, log format), pointed at a
small Runtime API served here (`/2018-06-01/runtime/invocation/next`, `/response`, `/error`,
`/init/error`). The worker's environment is the function's resolved Environment plus the
variables Lambda sets; its sys.path is the CodeUri directory, then the layers (as /opt/python).

A pool per function grows on demand up to a cap and reuses warm workers (one cold start each).
The function's Timeout is enforced from outside: a worker past its deadline is killed and the
invocation answers Lambda's `Sandbox.Timedout` error; a worker that dies answers
`Runtime.ExitError`. Nothing in the handlers knows it runs locally.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from sluice_cli.offline.logsink import LogSink, Sink

# Lambda allows 10 s of init; a cold start here imports boto3, pydantic and Powertools on a
# machine that may be busy with several other workers and the emulator, so allow more.
INIT_TIMEOUT_SECONDS = 30.0
DEFAULT_MAX_WORKERS = 8  # per function without ReservedConcurrentExecutions: this machine's limit
ASYNC_RETRY_DELAY_SECONDS = 1.0  # Lambda waits about 1 then 2 minutes between async retries
_NEXT_POLL_SECONDS = 0.5
SHUTDOWN_GRACE_SECONDS = 2.0

# Variables a worker inherits from this process: what Python needs, and coverage measurement.
_INHERITED = ("PATH", "LANG", "LC_ALL", "SYSTEMROOT", "TMPDIR")
_INHERITED_PREFIXES = ("COVERAGE_",)


@dataclass(frozen=True)
class AsyncConfig:
    """EventInvokeConfig / DeadLetterConfig: what happens to an asynchronous invocation that fails."""

    maximum_retry_attempts: int = 2
    on_failure: str | None = None  # destination ARN (SQS, SNS, Lambda, EventBridge)
    on_success: str | None = None
    dead_letter: str | None = None  # DeadLetterConfig.TargetArn (SQS or SNS)


@dataclass(frozen=True)
class FunctionSpec:
    logical_id: str
    name: str
    arn: str
    handler: str
    code_dir: Path
    runtime: str = "python3.13"
    layer_dirs: tuple[Path, ...] = ()
    timeout_seconds: float = 3.0
    memory_mb: int = 128
    environment: Mapping[str, str] = field(default_factory=dict)
    reserved_concurrency: int | None = None
    # Lambda's default is Text; locally JSON, so that every log line is one object (awslambdaric
    # then writes its own error records as JSON too). A function's LoggingConfig wins.
    log_format: str = "JSON"
    # The key of the function's own role when IAM is enforced (offline/iam.py); else any key.
    access_key_id: str = "testing"


def spec_to_json(spec: FunctionSpec) -> dict[str, Any]:
    data = dataclasses.asdict(spec)
    data["code_dir"] = str(spec.code_dir)
    data["layer_dirs"] = [str(path) for path in spec.layer_dirs]
    data["environment"] = dict(spec.environment)
    return data


def spec_from_json(data: Mapping[str, Any]) -> FunctionSpec:
    values = dict(data)
    values["code_dir"] = Path(values["code_dir"])
    values["layer_dirs"] = tuple(Path(path) for path in values.get("layer_dirs", ()))
    return FunctionSpec(**values)


@dataclass(frozen=True)
class InvokeResult:
    request_id: str
    payload: bytes
    function_error: str | None = None  # "Unhandled", as Lambda's X-Amz-Function-Error header
    duration_ms: float = 0.0

    def json(self) -> Any:
        return json.loads(self.payload) if self.payload else None

    @property
    def error_type(self) -> str | None:
        if self.function_error is None:
            return None
        try:
            return str(json.loads(self.payload).get("errorType"))
        except (ValueError, AttributeError):
            return None


class FunctionNotFound(LookupError):
    pass


class Throttled(RuntimeError):
    """Every worker of a function with reserved concurrency is busy (Lambda's TooManyRequests)."""


def lambda_error(request_id: str, error_type: str, message: str) -> bytes:
    """An error raised by Lambda itself (not the handler), in the body Lambda answers with."""
    body = {"errorType": error_type, "errorMessage": f"RequestId: {request_id} Error: {message}"}
    return json.dumps(body).encode()


class _Invocation:
    def __init__(self, payload: bytes, function_arn: str, client_context: str | None) -> None:
        self.request_id = str(uuid.uuid4())
        self.payload = payload
        self.function_arn = function_arn
        self.client_context = client_context
        self.started = threading.Event()
        self.done = threading.Event()
        self.started_at = 0.0
        self.result: InvokeResult | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        self.started_at = time.monotonic()
        self.started.set()

    def finish(self, payload: bytes, error: bool) -> bool:
        """First answer wins: a late response after a timeout is ignored, as Lambda ignores it."""
        with self._lock:
            if self.result is not None:
                return False
            elapsed = (time.monotonic() - self.started_at) * 1000 if self.started_at else 0.0
            self.result = InvokeResult(self.request_id, payload, "Unhandled" if error else None, elapsed)
        self.started.set()
        self.done.set()
        return True


class _Worker:
    """One execution environment: a process running awslambdaric against our Runtime API."""

    def __init__(self, runtime: LambdaRuntime, spec: FunctionSpec, worker_id: str) -> None:
        self.runtime = runtime
        self.spec = spec
        self.id = worker_id
        self.inbox: queue.Queue[_Invocation] = queue.Queue()
        self.current: _Invocation | None = None
        self.init_error: bytes | None = None
        self.spawned_at = time.monotonic()
        self.init_ms: float | None = None
        self.exited = threading.Event()
        self.exit_reason = ""
        self._reported_init = False
        self._lock = threading.Lock()
        self.process = subprocess.Popen(  # noqa: S603 - our own interpreter running awslambdaric
            [runtime.python, "-m", "awslambdaric", spec.handler],
            cwd=spec.code_dir,
            env=runtime.worker_environment(spec, worker_id),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C in a terminal reaches the stack, which stops workers itself
        )
        self._pump_thread = threading.Thread(target=self._pump, name=f"lambda-log-{worker_id}", daemon=True)
        self._pump_thread.start()

    def alive(self) -> bool:
        return self.process.poll() is None

    def _pump(self) -> None:
        """Worker output → the function's log file; at EOF the process has exited."""
        stdout = self.process.stdout
        if stdout is None:  # Popen was given stdout=PIPE: never None here
            raise RuntimeError("worker started without a stdout pipe")
        for raw in iter(stdout.readline, b""):
            current = self.current
            line = raw.decode("utf-8", errors="replace")
            self.runtime.sink.line(self.spec.logical_id, line, current.request_id if current else None)
        code = self.process.wait()
        self.exit_reason = f"signal: {_signal_name(-code)}" if code < 0 else f"exit status {code}"
        self.exited.set()
        self.fail_pending()

    def fail_pending(self) -> None:
        """The process is gone: answer the invocation it held and any still queued for it."""
        pending: list[_Invocation] = []
        with self._lock:
            if self.current is not None:
                pending.append(self.current)
        while True:
            try:
                pending.append(self.inbox.get_nowait())
            except queue.Empty:
                break
        for invocation in pending:
            if self.init_error is not None:
                body = json.loads(self.init_error)
                body["requestId"] = invocation.request_id
                invocation.finish(json.dumps(body).encode(), error=True)
            else:
                message = f"Runtime exited with error: {self.exit_reason}"
                invocation.finish(
                    lambda_error(invocation.request_id, "Runtime.ExitError", message), error=True
                )

    def next_invocation(self, stop: threading.Event) -> _Invocation | None:
        """Runtime API `next`: blocks until an invocation is queued for this worker."""
        if self.init_ms is None:
            self.init_ms = (time.monotonic() - self.spawned_at) * 1000
        with self._lock:
            self.current = None
        while not stop.is_set() and not self.exited.is_set():
            try:
                invocation = self.inbox.get(timeout=_NEXT_POLL_SECONDS)
            except queue.Empty:
                continue
            if invocation.done.is_set():
                continue  # answered already (timed out waiting for init): drop it
            with self._lock:
                self.current = invocation
            invocation.start()
            self.runtime.sink.platform(
                self.spec.logical_id,
                f"START RequestId: {invocation.request_id} Version: $LATEST",
                invocation.request_id,
            )
            return invocation
        return None

    def complete(self, request_id: str, body: bytes, error: bool) -> bool:
        with self._lock:
            invocation = self.current
        if invocation is None or invocation.request_id != request_id:
            return False
        if invocation.finish(body, error):
            self._report(invocation, status="error" if error else None)
        return True

    def fail_init(self, body: bytes) -> None:
        self.init_error = body

    def dump_stacks(self) -> None:
        """Offline only: every thread's stack into the function's log before a timeout's kill
        (faulthandler, PYTHONFAULTHANDLER), so the log says where the invocation waited."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGABRT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=2)

    def kill(self) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)

    def _report(self, invocation: _Invocation, status: str | None) -> None:
        result = invocation.result
        duration = result.duration_ms if result else 0.0
        try:
            used_mb = psutil.Process(self.process.pid).memory_info().rss // (1024 * 1024)
        except psutil.Error:
            used_mb = 0
        parts = [
            f"REPORT RequestId: {invocation.request_id}",
            f"Duration: {duration:.2f} ms",
            f"Billed Duration: {int(duration) + 1} ms",
            f"Memory Size: {self.spec.memory_mb} MB",
            f"Max Memory Used: {used_mb} MB",
        ]
        if self.init_ms is not None and not self._reported_init:
            # The first REPORT of an execution environment carries its init duration.
            self._reported_init = True
            parts.append(f"Init Duration: {self.init_ms:.2f} ms")
        if status:
            parts.append(f"Status: {status}")
        sink = self.runtime.sink
        sink.platform(self.spec.logical_id, f"END RequestId: {invocation.request_id}", invocation.request_id)
        sink.platform(self.spec.logical_id, "\t".join(parts), invocation.request_id)


def _signal_name(number: int) -> str:
    return {9: "killed", 15: "terminated", 11: "segmentation fault", 6: "aborted"}.get(number, str(number))


class _Pool:
    """The execution environments of one function: warm ones are reused, new ones up to a cap."""

    def __init__(self, spec: FunctionSpec, spawn: Callable[[FunctionSpec], _Worker], cap: int) -> None:
        self.spec = spec
        self._spawn = spawn
        self.cap = cap
        self.throttles = spec.reserved_concurrency is not None
        self._idle: list[_Worker] = []
        self._busy: set[_Worker] = set()
        self._cond = threading.Condition()
        self.cold_starts = 0
        self.closed = False

    def acquire(self, wait_seconds: float) -> _Worker:
        deadline = time.monotonic() + wait_seconds
        with self._cond:
            while True:
                if self.closed:
                    raise Throttled(f"{self.spec.name} is shutting down")
                self._idle = [worker for worker in self._idle if worker.alive()]
                if self._idle:
                    worker = self._idle.pop()  # the most recently used: warmest
                    self._busy.add(worker)
                    return worker
                if len(self._busy) < self.cap:
                    worker = self._spawn(self.spec)
                    self.cold_starts += 1
                    self._busy.add(worker)
                    return worker
                remaining = deadline - time.monotonic()
                if self.throttles or remaining <= 0:
                    raise Throttled(
                        f"{self.spec.name}: {len(self._busy)} concurrent executions, limit {self.cap}"
                    )
                self._cond.wait(min(remaining, 1.0))

    def release(self, worker: _Worker) -> None:
        with self._cond:
            self._busy.discard(worker)
            if worker.alive() and not self.closed:
                self._idle.append(worker)
            self._cond.notify()

    def discard(self, worker: _Worker) -> None:
        worker.kill()
        with self._cond:
            self._busy.discard(worker)
            self._cond.notify()

    def prewarm(self) -> None:
        with self._cond:
            if self._idle or self._busy or self.closed:
                return
            worker = self._spawn(self.spec)
            self.cold_starts += 1
            self._idle.append(worker)

    def busy(self) -> int:
        with self._cond:
            return len(self._busy)

    def workers(self) -> list[_Worker]:
        with self._cond:
            return [*self._idle, *self._busy]

    def close(self) -> list[_Worker]:
        with self._cond:
            self.closed = True
            workers = [*self._idle, *self._busy]
            self._idle.clear()
            self._cond.notify_all()
        return workers


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        return


_RUNTIME_PATH = re.compile(
    r"^/w/(?P<worker>[^/]+)/2018-06-01/runtime/(?:invocation/(?P<request>[^/]+)/(?P<verb>response|error)"
    r"|(?P<next>invocation/next)|(?P<init>init/error))$"
)


class LambdaRuntime:
    """Registered functions, their worker pools and the Runtime API the workers poll."""

    def __init__(
        self,
        *,
        endpoint_url: str,
        log_dir: Path | None = None,
        region: str = "us-east-1",
        max_workers: int = DEFAULT_MAX_WORKERS,
        python: str = sys.executable,
        extra_environment: Mapping[str, str] | None = None,
        destination_sender: Callable[[str, dict[str, Any]], None] | None = None,
        sink: Sink | None = None,
    ) -> None:
        self.endpoint_url = endpoint_url
        self.region = region
        self.max_workers = max_workers
        self.python = python
        self.sink: Sink = sink or LogSink(log_dir)
        self.extra_environment = dict(extra_environment or {})
        self.destination_sender = destination_sender
        self._functions: dict[str, FunctionSpec] = {}
        self._async: dict[str, AsyncConfig] = {}
        self._pools: dict[str, _Pool] = {}
        self._workers: dict[str, _Worker] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._server: BaseWSGIServer | None = None
        self._async_executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="lambda-async")
        self.timeouts: dict[str, int] = {}  # by logical id: invocations killed at the function's timeout
        self.address = ""

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        self._server = make_server(
            "127.0.0.1", 0, self._runtime_api, threaded=True, request_handler=_QuietHandler
        )
        self.address = f"127.0.0.1:{self._server.server_port}"
        threading.Thread(target=self._server.serve_forever, name="lambda-runtime-api", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        self._async_executor.shutdown(wait=False, cancel_futures=True)
        workers = [worker for pool in self._pools.values() for worker in pool.close()]
        # SIGTERM first, as Lambda's shutdown does: a process that handles it (coverage's
        # `sigterm` option saves its data) gets a moment; whatever is left is killed.
        for worker in workers:
            with contextlib.suppress(ProcessLookupError):
                worker.process.terminate()
        deadline = time.monotonic() + SHUTDOWN_GRACE_SECONDS
        for worker in workers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.process.wait(timeout=max(deadline - time.monotonic(), 0))
            worker.kill()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        self.sink.close()

    # -- functions -------------------------------------------------------------------------------

    def register(self, spec: FunctionSpec) -> None:
        cap = spec.reserved_concurrency if spec.reserved_concurrency is not None else self.max_workers
        with self._lock:
            self._functions[spec.name] = spec
            self._pools[spec.name] = _Pool(spec, self._spawn, max(cap, 0))

    def configure_async(self, function: str, config: AsyncConfig) -> None:
        spec = self.find(function)
        if spec is None:
            raise FunctionNotFound(function)
        self._async[spec.name] = config

    def functions(self) -> list[FunctionSpec]:
        return list(self._functions.values())

    def find(self, name_or_arn: str) -> FunctionSpec | None:
        """By name, full or partial ARN, with or without a qualifier, or by logical id."""
        name = name_or_arn
        if name.startswith("arn:"):
            parts = name.split(":")
            name = parts[6] if len(parts) > 6 else name
        elif ":" in name:  # "123456789012:function:name" or "name:$LATEST"
            parts = name.split(":")
            name = parts[2] if len(parts) >= 3 and parts[1] == "function" else parts[0]
        spec = self._functions.get(name)
        if spec is None:
            spec = next((item for item in self._functions.values() if item.logical_id == name), None)
        return spec

    def prewarm(self, function: str) -> None:
        spec = self.find(function)
        if spec is not None:
            self._pools[spec.name].prewarm()

    def pool_stats(self) -> dict[str, dict[str, int]]:
        return {
            spec.logical_id: {
                "workers": len(self._pools[spec.name].workers()),
                "busy": self._pools[spec.name].busy(),
                "cold_starts": self._pools[spec.name].cold_starts,
            }
            for spec in self._functions.values()
        }

    # -- invoking --------------------------------------------------------------------------------

    def invoke(
        self, function: str, payload: bytes, *, client_context: str | None = None, queue_seconds: float = 60.0
    ) -> InvokeResult:
        """A synchronous invocation (RequestResponse), answered as Lambda answers it."""
        spec = self.find(function)
        if spec is None:
            raise FunctionNotFound(function)
        pool = self._pools[spec.name]
        worker = pool.acquire(queue_seconds)
        invocation = _Invocation(payload, spec.arn, client_context)
        worker.inbox.put(invocation)
        if worker.exited.is_set():  # died between acquire and put: nobody else will answer
            worker.fail_pending()
        healthy = False
        try:
            healthy = self._await(worker, invocation)
        finally:
            if healthy and worker.alive():
                pool.release(worker)
            else:
                pool.discard(worker)
        if invocation.result is None:  # _await always answers; for the type checker
            raise RuntimeError(f"{spec.name}: invocation {invocation.request_id} ended without an answer")
        return invocation.result

    def _await(self, worker: _Worker, invocation: _Invocation) -> bool:
        """Wait for the answer within the function's timeout; False if the worker must go."""
        spec = worker.spec
        if not invocation.started.wait(INIT_TIMEOUT_SECONDS):
            message = f"Task timed out after {INIT_TIMEOUT_SECONDS:.2f} seconds (init)"
            invocation.finish(lambda_error(invocation.request_id, "Sandbox.Timedout", message), error=True)
            return False
        remaining = invocation.started_at + spec.timeout_seconds - time.monotonic()
        if invocation.done.wait(max(remaining, 0)):
            return worker.init_error is None and not worker.exited.is_set()
        message = f"Task timed out after {spec.timeout_seconds:.2f} seconds"
        if invocation.finish(lambda_error(invocation.request_id, "Sandbox.Timedout", message), error=True):
            self.timeouts[spec.logical_id] = self.timeouts.get(spec.logical_id, 0) + 1
            stamp = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
            worker._report(invocation, status="timeout")
            self.sink.platform(
                spec.logical_id, f"{stamp} {invocation.request_id} {message}", invocation.request_id
            )
            worker.dump_stacks()
        return False

    def invoke_async(self, function: str, payload: bytes) -> str:
        """InvocationType Event: queued, retried on error, then sent to the failure destination."""
        return self.submit_async(function, payload)[0]

    def submit_async(self, function: str, payload: bytes) -> tuple[str, Future[None]]:
        """`invoke_async`, plus the future that is done once the invocation (and its retries) has
        ended: for a local caller that must know its event was handled (the scheduler's pause)."""
        spec = self.find(function)
        if spec is None:
            raise FunctionNotFound(function)
        request_id = str(uuid.uuid4())
        return request_id, self._async_executor.submit(self._run_async, spec, payload, request_id)

    def _run_async(self, spec: FunctionSpec, payload: bytes, request_id: str) -> None:
        config = self._async.get(spec.name, AsyncConfig())
        attempts = 0
        result: InvokeResult | None = None
        while not self._stop.is_set():
            attempts += 1
            try:
                result = self.invoke(spec.name, payload)
            except Throttled:
                result = None
            if result is not None and result.function_error is None:
                if config.on_success:
                    self._send_destination(
                        config.on_success, spec, payload, result, attempts=attempts, condition="Success"
                    )
                return
            if attempts > config.maximum_retry_attempts:
                break
            self._stop.wait(ASYNC_RETRY_DELAY_SECONDS * attempts)
        if self._stop.is_set():
            return
        target = config.on_failure or config.dead_letter
        if target:
            self._send_destination(
                target, spec, payload, result, attempts=attempts, condition="RetriesExhausted"
            )

    def _send_destination(
        self,
        arn: str,
        spec: FunctionSpec,
        payload: bytes,
        result: InvokeResult | None,
        *,
        attempts: int,
        condition: str,
    ) -> None:
        """The invocation record Lambda sends to a destination."""
        record: dict[str, Any] = {
            "version": "1.0",
            "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "requestContext": {
                "requestId": result.request_id if result else str(uuid.uuid4()),
                "functionArn": f"{spec.arn}:$LATEST",
                "condition": condition,
                "approximateInvokeCount": attempts,
            },
            "requestPayload": _json_or_text(payload),
            "responseContext": {
                "statusCode": 200 if result else 429,
                "executedVersion": "$LATEST",
                **({"functionError": result.function_error} if result and result.function_error else {}),
            },
            "responsePayload": _json_or_text(result.payload) if result else None,
        }
        if self.destination_sender is not None:
            self.destination_sender(arn, record)

    # -- workers ---------------------------------------------------------------------------------

    def worker_environment(self, spec: FunctionSpec, worker_id: str) -> dict[str, str]:
        """Lambda's reserved variables, the function's Environment, and the way to the emulator."""
        environ = {name: os.environ[name] for name in _INHERITED if name in os.environ}
        environ.update({k: v for k, v in os.environ.items() if k.startswith(_INHERITED_PREFIXES)})
        stream = f"{datetime.now(UTC):%Y/%m/%d}/[$LATEST]{worker_id.replace('-', '')}"
        environ.update(
            {
                "TZ": ":UTC",
                "LANG": environ.get("LANG", "en_US.UTF-8"),
                "PYTHONUNBUFFERED": "1",
                "PYTHONFAULTHANDLER": "1",  # a timed-out worker's stacks reach its log (dump_stacks)
                "PYTHONDONTWRITEBYTECODE": "1",
                "PYTHONPATH": os.pathsep.join(str(path) for path in (spec.code_dir, *spec.layer_dirs)),
                "LAMBDA_TASK_ROOT": str(spec.code_dir),
                "LAMBDA_RUNTIME_DIR": str(Path(sys.executable).parent),
                "_HANDLER": spec.handler,
                "AWS_EXECUTION_ENV": f"AWS_Lambda_{spec.runtime}",
                "AWS_LAMBDA_FUNCTION_NAME": spec.name,
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(spec.memory_mb),
                "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
                "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
                "AWS_LAMBDA_LOG_FORMAT": spec.log_format,
                "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{spec.name}",
                "AWS_LAMBDA_LOG_STREAM_NAME": stream,
                "AWS_REGION": self.region,
                "AWS_DEFAULT_REGION": self.region,
            }
        )
        environ.update({key: str(value) for key, value in spec.environment.items()})
        environ.update(
            {
                # Fake credentials and the emulator's endpoint: no call can reach AWS.
                "AWS_ACCESS_KEY_ID": spec.access_key_id,
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_SESSION_TOKEN": "testing",
                "AWS_ENDPOINT_URL": self.endpoint_url,
                # No X-Ray daemon locally: Tracer and the X-Ray SDK would only log errors.
                "POWERTOOLS_TRACE_DISABLED": "true",
                "AWS_XRAY_SDK_ENABLED": "false",
                "AWS_LAMBDA_RUNTIME_API": f"{self.address}/w/{worker_id}",
                **self.extra_environment,
            }
        )
        return environ

    def _spawn(self, spec: FunctionSpec) -> _Worker:
        worker_id = uuid.uuid4().hex[:12]
        worker = _Worker(self, spec, worker_id)
        with self._lock:
            self._workers[worker_id] = worker
        return worker

    def _runtime_api(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        request = Request(environ)
        match = _RUNTIME_PATH.match(request.path)
        worker = self._workers.get(match.group("worker")) if match else None
        if match is None or worker is None:
            return Response("unknown worker or path", status=404)(environ, start_response)
        if match.group("next"):
            invocation = worker.next_invocation(self._stop)
            if invocation is None:  # shutting down: the worker is about to be killed
                return Response("stopping", status=500)(environ, start_response)
            headers = {
                "Lambda-Runtime-Aws-Request-Id": invocation.request_id,
                "Lambda-Runtime-Deadline-Ms": str(int((time.time() + worker.spec.timeout_seconds) * 1000)),
                "Lambda-Runtime-Invoked-Function-Arn": invocation.function_arn,
                "Lambda-Runtime-Trace-Id": f"Root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]};Sampled=0",
                "Content-Type": "application/json",
            }
            if invocation.client_context:
                headers["Lambda-Runtime-Client-Context"] = invocation.client_context
            return Response(invocation.payload, status=200, headers=headers)(environ, start_response)
        body = request.get_data()
        if match.group("init"):
            worker.fail_init(body)
            return Response(b'{"status":"OK"}', status=202)(environ, start_response)
        error = match.group("verb") == "error"
        if not worker.complete(match.group("request"), body, error):
            return Response(b'{"errorMessage":"Invalid request ID"}', status=400)(environ, start_response)
        return Response(b'{"status":"OK"}', status=202)(environ, start_response)


def _json_or_text(payload: bytes) -> Any:
    try:
        return json.loads(payload)
    except ValueError:
        return payload.decode("utf-8", errors="replace")
