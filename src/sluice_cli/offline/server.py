"""The one local AWS endpoint: moto's WSGI app behind a layer that runs Lambda invocations.

moto serves every API (S3, EventBridge, SQS, DynamoDB, SSM, SNS, Step Functions, ...) but cannot
run Lambda code without Docker. Lambda's Invoke API is plain HTTP
(`POST /2015-03-31/functions/{name}/invocations`), and both boto3 clients and moto's own Step
Functions interpreter call it on this endpoint, so answering that one route from the local Lambda
runtime makes the whole stack run real handlers. Everything else goes to moto.

The server is threaded: a handler's own AWS calls come back into the same server while the
invocation that runs it is still open.
"""

from __future__ import annotations

import json
import re
import threading
import urllib.request
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import unquote

from moto.core.config import default_user_config
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import BaseWSGIServer, make_server
from werkzeug.wrappers import Request, Response

from sluice_cli.offline.iam import IamGate
from sluice_cli.offline.lambda_runtime import FunctionNotFound, LambdaRuntime, Throttled
from sluice_cli.offline.quotas import QuotaGate

_INVOKE = re.compile(r"^/2015-03-31/functions/(?P<name>[^/]+)/invocations/?$")
_INVOKE_ASYNC = re.compile(r"^/2014-11-13/functions/(?P<name>[^/]+)/invoke-async/?$")
# DynamoDB applies a conditional write atomically; moto checks the condition and then writes with
# no lock between, so on a threaded server two conditional writes can both win (measured: ~5% of
# rate-limiter slots granted twice, two dispatcher leases). Writes are serialised to restore it.
_DYNAMODB_WRITES = frozenset(
    f"DynamoDB_20120810.{operation}"
    for operation in ("PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems")
)

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class _QuietMotoHandler(MotoRequestHandler):
    """moto's request handler (it keeps S3 metadata header names) without a log line per request."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        return


def _error(status: int, error_type: str, message: str) -> Response:
    """A Lambda API error: boto3 reads the type from x-amzn-ErrorType."""
    body = json.dumps({"Type": "User", "message": message})
    return Response(
        body, status=status, headers={"x-amzn-ErrorType": error_type}, content_type="application/json"
    )


class LambdaGateway:
    """WSGI: Lambda Invoke → the local runtime; anything else → moto."""

    def __init__(
        self,
        runtime: LambdaRuntime,
        fallback: WSGIApp,
        quota_gate: QuotaGate | None = None,
        iam_gate: IamGate | None = None,
    ) -> None:
        self.runtime = runtime
        self.fallback = fallback
        self.quota_gate = quota_gate
        self.iam_gate = iam_gate
        self._dynamodb_write_lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        # A function's or the state machine's call that its role does not allow: AccessDenied, as
        # AWS answers before doing anything (offline/iam.py). Invokes too: the caller needs the right.
        if self.iam_gate is not None and (denied := self.iam_gate.refuse(environ)) is not None:
            return denied(environ, start_response)
        if environ.get("REQUEST_METHOD") == "POST":
            if match := _INVOKE.match(path):
                return self._invoke(Request(environ), unquote(match.group("name")))(environ, start_response)
            if match := _INVOKE_ASYNC.match(path):
                request = Request(environ)
                response = self._dispatch(unquote(match.group("name")), request.get_data(), "Event", None)
                return response(environ, start_response)
        # AWS's quotas that moto does not enforce, refused as AWS refuses them (offline/quotas.py).
        if self.quota_gate is not None and (refusal := self.quota_gate.refuse(environ)) is not None:
            return refusal(environ, start_response)
        if environ.get("HTTP_X_AMZ_TARGET") in _DYNAMODB_WRITES:
            with self._dynamodb_write_lock:
                return list(self.fallback(environ, start_response))
        return self.fallback(environ, start_response)

    def _invoke(self, request: Request, name: str) -> Response:
        qualifier = request.args.get("Qualifier")
        if qualifier and qualifier != "$LATEST" and ":" not in name:
            name = f"{name}:{qualifier}"
        invocation_type = request.headers.get("X-Amz-Invocation-Type", "RequestResponse")
        context = request.headers.get("X-Amz-Client-Context")
        return self._dispatch(name, request.get_data(), invocation_type, context)

    def _dispatch(
        self, name: str, payload: bytes, invocation_type: str, client_context: str | None
    ) -> Response:
        spec = self.runtime.find(name)
        if spec is None:
            return _error(404, "ResourceNotFoundException", f"Function not found: {name}")
        if invocation_type == "DryRun":
            return Response(b"", status=204)
        if invocation_type == "Event":
            request_id = self.runtime.invoke_async(spec.name, payload or b"{}")
            return Response(b"", status=202, headers={"x-amzn-RequestId": request_id})
        try:
            result = self.runtime.invoke(spec.name, payload or b"{}", client_context=client_context)
        except Throttled as error:
            return _error(429, "TooManyRequestsException", f"Rate Exceeded. {error}")
        except FunctionNotFound:
            return _error(404, "ResourceNotFoundException", f"Function not found: {name}")
        headers = {"X-Amz-Executed-Version": "$LATEST", "x-amzn-RequestId": result.request_id}
        if result.function_error:
            headers["X-Amz-Function-Error"] = result.function_error
        return Response(result.payload, status=200, headers=headers, content_type="application/json")


def enable_state_machine_execution(enabled: bool = True) -> bool:
    """moto only records executions unless told to interpret the ASL; the previous setting."""
    previous = bool(default_user_config["stepfunctions"].get("execute_state_machine", False))
    default_user_config["stepfunctions"]["execute_state_machine"] = enabled
    return previous


class EmulatorServer:
    """moto + the Lambda gateway, served threaded on 127.0.0.1 from a background thread."""

    def __init__(
        self,
        runtime: LambdaRuntime,
        port: int = 0,
        quota_gate: QuotaGate | None = None,
        iam_gate: IamGate | None = None,
    ) -> None:
        self.runtime = runtime
        self.requested_port = port
        self.quota_gate = quota_gate
        self.iam_gate = iam_gate
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def bind(self) -> int:
        """Bind first (the port may be 0): Lambda workers and moto's ASL need the URL before start."""
        moto_app = DomainDispatcherApplication(create_backend_app)
        app = LambdaGateway(self.runtime, moto_app, self.quota_gate, self.iam_gate)
        self._server = make_server(
            "127.0.0.1", self.requested_port, app, threaded=True, request_handler=_QuietMotoHandler
        )
        self.port = self._server.server_port
        return self.port

    def start(self) -> None:
        if self._server is None:
            self.bind()
        server = self._server
        if server is None:  # bind() sets it; for the type checker
            raise RuntimeError("the emulator could not bind its socket")
        self._thread = threading.Thread(target=server.serve_forever, name="emulator", daemon=True)
        self._thread.start()
        # One process holds moto's backends: a stack started after another must not see its state.
        self.post("/moto-api/reset", b"")

    def post(self, path: str, body: bytes) -> bytes:
        request = urllib.request.Request(f"{self.url}{path}", data=body, method="POST")  # noqa: S310 - our own http URL
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            return bytes(response.read())

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
