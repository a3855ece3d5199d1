"""Test helpers for the file-processing data path: a loopback API, the tables, Lambda contexts.

`ApiServer` is a real HTTP server on 127.0.0.1 (http.server in a thread) that records every
request and answers what the test's `respond` says: tests assert what the API received.
"""

import functools
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

import boto3

RAW_BUCKET = "sluice-raw-test"
PROCESSED_BUCKET = "sluice-processed-test"


@dataclass(frozen=True)
class Received:
    key: str
    payload: Any  # the JSON body; a body that is not JSON (an OAuth token request's form) as text
    headers: dict[str, str]
    method: str = "POST"
    path: str = ""


@dataclass
class Reply:
    status: int = 200
    body: Any = field(default_factory=lambda: {"status": "accepted"})  # dict/list: JSON; bytes: as is
    headers: dict[str, str] = field(default_factory=dict)


Responder = Callable[[Received, int], Reply]  # (request, how many times this key was seen before) -> reply


def accept_all(request: Received, seen: int) -> Reply:
    return Reply(200, {"status": "accepted", "ref": f"ref-{request.key[:8]}"})


class ApiServer:
    """The downstream API, on a free loopback port, for the duration of a `with` block."""

    def __init__(self, respond: Responder = accept_all):
        self.respond = respond
        self.received: list[Received] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                try:
                    payload = json.loads(body) if body else None
                except ValueError:
                    payload = body.decode()
                request = Received(
                    key=self.headers.get("Idempotency-Key", ""),
                    payload=payload,
                    headers=dict(self.headers.items()),
                    method=self.command,
                    path=self.path,
                )
                with server._lock:
                    seen = sum(1 for earlier in server.received if earlier.key == request.key)
                    server.received.append(request)
                reply = server.respond(request, seen)
                data = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_PUT = do_PATCH = do_POST

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="api-server", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/orders"

    def keys(self) -> list[str]:
        with self._lock:
            return [request.key for request in self.received]

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        assert not self._thread.is_alive(), "the API server thread did not stop within 5 s"


@functools.cache
def s3_client() -> Any:
    """One client for all tests: creating one costs ~0.2 s; moto intercepts it inside any mock_aws."""
    return boto3.client("s3", region_name="us-east-1")


@functools.cache
def dynamodb_resource() -> Any:
    return boto3.resource("dynamodb", region_name="us-east-1")


def create_tables() -> dict[str, Any]:
    """MetadataTable and ControlTable (pk), IdempotencyTable (id), as in template.yaml. Under mock_aws."""
    dynamodb = dynamodb_resource()
    tables = {}
    for name, key in (("MetadataTable", "pk"), ("ControlTable", "pk"), ("IdempotencyTable", "id")):
        tables[name] = dynamodb.create_table(
            TableName=name,
            KeySchema=[{"AttributeName": key, "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": key, "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
    return tables


def create_buckets() -> Any:
    """The raw (versioned, like RawBucket) and processed buckets; the S3 client. Under mock_aws."""
    s3 = s3_client()
    s3.create_bucket(Bucket=RAW_BUCKET)
    s3.put_bucket_versioning(Bucket=RAW_BUCKET, VersioningConfiguration={"Status": "Enabled"})
    s3.create_bucket(Bucket=PROCESSED_BUCKET)
    return s3


@dataclass
class CountdownContext:
    """A Lambda context whose remaining time is plenty for `calls` questions, then `short`.

    Delivery asks once per row before taking it, so `calls=n` lets a segment take n rows.
    """

    calls: int = 1_000_000
    plenty_ms: int = 600_000
    short_ms: int = 1_000
    function_name: str = "sluice-test-ProcessObject"
    memory_limit_in_mb: int = 512
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:sluice-test-ProcessObject"
    aws_request_id: str = "22222222-3333-4444-5555-666666666666"

    def get_remaining_time_in_millis(self) -> int:
        self.calls -= 1
        return self.plenty_ms if self.calls >= 0 else self.short_ms
