"""Issue 12: the downstream credential from Secrets Manager (sluice/apiauth.py) and the request's
shape (ApiMethod, `{column}` in ApiUrl, ApiHeaders), against a loopback API that requires each
kind of credential. Secrets in moto's Secrets Manager, read through Powertools' SecretsProvider."""

import base64
import json
import random
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs

import boto3
import pytest
from aws_lambda_powertools.utilities.parameters import SecretsProvider
from datapath_support import ApiServer, Received, Reply, create_tables
from moto import mock_aws

from sluice.apiauth import ApiAuth
from sluice.downstream import (
    DownstreamClient,
    HttpTransport,
    RequestTarget,
    RetryPolicy,
    RowUrlError,
    client_from_settings,
)
from sluice.health import HEALTH_KEY, DownstreamHealth
from sluice.ratelimit import ManualClock, shared_limiter
from sluice.settings import ProcessSettings

ROW = {"id": "A-1", "note": "hello"}
T0 = 1_800_000_000.0


class Secrets:
    """moto's Secrets Manager, and how often the code read it."""

    def __init__(self) -> None:
        self.client = boto3.client("secretsmanager", region_name="us-east-1")
        self.reads = 0
        self.client.meta.events.register("before-call.secrets-manager.GetSecretValue", self._count)

    def _count(self, **_: Any) -> None:
        self.reads += 1

    def create(self, name: str, value: str) -> str:
        return str(self.client.create_secret(Name=name, SecretString=value)["ARN"])

    def rotate(self, arn: str, value: str) -> None:
        self.client.put_secret_value(SecretId=arn, SecretString=value)


@pytest.fixture
def aws() -> Iterator[None]:
    with mock_aws():
        yield


@pytest.fixture
def secrets(aws: None) -> Secrets:
    return Secrets()


def auth(secrets: Secrets, kind: Any, arn: str, clock: Any = None) -> ApiAuth:
    options = {"clock": clock} if clock is not None else {}
    return ApiAuth(kind, arn, secrets=SecretsProvider(boto3_client=secrets.client), stage="local", **options)


def make_client(server: ApiServer, credential: ApiAuth | None, **options: Any) -> DownstreamClient:
    table = create_tables()["ControlTable"]
    return DownstreamClient(
        HttpTransport(
            options.pop("url", server.url),
            pool_size=4,
            timeout_seconds=5,
            method=options.pop("method", "POST"),
        ),
        shared_limiter(table, limit=1000),
        policy=RetryPolicy(max_attempts=2, backoff_base_seconds=0.01, backoff_max_seconds=0.02),
        auth=credential,
        **options,
    )


def requires(header: str, expected: str) -> Any:
    def respond(request: Received, seen: int) -> Reply:
        if request.headers.get(header) != expected:
            return Reply(401, {"error": "unauthorized"})
        return Reply(200, {"ok": True})

    return respond


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize(
    ("kind", "secret", "header", "expected"),
    [
        ("api-key", '{"header": "X-Api-Key", "value": "k-123"}', "X-Api-Key", "k-123"),
        (
            "basic",
            '{"username": "sluice", "password": "p@ss:word"}',
            "Authorization",
            basic("sluice", "p@ss:word"),
        ),
        ("bearer", '{"token": "s3cr3t"}', "Authorization", "Bearer s3cr3t"),
    ],
)
def test_each_kind_of_secret_is_sent_as_the_api_requires(
    secrets: Secrets, kind: str, secret: str, header: str, expected: str
) -> None:
    arn = secrets.create(f"api-{kind}", secret)
    credential = auth(secrets, kind, arn)
    with ApiServer(requires(header, expected)) as server:
        client = make_client(server, credential)
        deliveries = [client.deliver(ROW, f"key-{n}") for n in range(5)]

    assert all(delivery.accepted for delivery in deliveries), deliveries
    assert [request.headers.get(header) for request in server.received] == [expected] * 5
    assert secrets.reads == 1  # cached per container (Powertools), not read per row


def test_a_rotated_bearer_token_is_picked_up_on_the_first_401_without_failing_a_row(secrets: Secrets) -> None:
    # GIVEN an API that accepts "t1", then, after its third request, only "t2" (the secret rotated)
    arn = secrets.create("api-bearer", '{"token": "t1"}')
    accepted = {"token": "t1"}

    def respond(request: Received, seen: int) -> Reply:
        if request.headers.get("Authorization") != f"Bearer {accepted['token']}":
            return Reply(401, {"error": "invalid_token"})
        return Reply(200, {"ok": True})

    with ApiServer(respond) as server:
        client = make_client(server, auth(secrets, "bearer", arn))
        first = [client.deliver(ROW, f"key-{n}") for n in range(3)]
        secrets.rotate(arn, '{"token": "t2"}')
        accepted["token"] = "t2"
        then = [client.deliver(ROW, f"key-{n}") for n in range(3, 8)]

    # THEN every row was accepted, the first after the rotation sent twice (t1, then t2), the rest with t2
    assert all(delivery.accepted for delivery in first + then)
    sent = [request.headers["Authorization"] for request in server.received]
    assert sent == ["Bearer t1"] * 4 + ["Bearer t2"] * 5
    assert then[0].attempts == 2
    assert secrets.reads == 2  # once cold, once on the 401


def test_a_401_that_persists_after_the_reread_opens_the_breaker_with_a_clear_reason(secrets: Secrets) -> None:
    # GIVEN an API that refuses the stored token, a health breaker and an alert sink
    arn = secrets.create("api-bearer", '{"token": "stale"}')
    table = create_tables()["ControlTable"]
    clock = ManualClock(T0)
    alerts: list[tuple[str, dict[str, Any]]] = []
    health = DownstreamHealth(table, clock=clock, probe_seconds=5, notify=lambda s, m: alerts.append((s, m)))
    valid = {"token": "fresh"}

    def respond(request: Received, seen: int) -> Reply:
        if request.headers.get("Authorization") != f"Bearer {valid['token']}":
            return Reply(401, {"error": "invalid_token"})
        return Reply(200, {"ok": True})

    with ApiServer(respond) as server:
        client = DownstreamClient(
            HttpTransport(server.url, pool_size=1, timeout_seconds=5),
            shared_limiter(table, limit=1000, clock=clock),
            clock=clock,
            rng=random.Random(1),
            health=health,
            auth=auth(secrets, "bearer", arn, clock=clock.now),
        )
        # WHEN the breaker opens (the first 401, the secret re-read and unchanged), someone fixes
        # the secret while the row waits for the next probe
        original = health.refused

        def refused_then_fixed(problem: str) -> None:
            original(problem)
            secrets.rotate(arn, '{"token": "fresh"}')

        health.refused = refused_then_fixed  # type: ignore[method-assign]
        delivery = client.deliver(ROW, "key-1")

    # THEN the breaker's alert said why (401, the credential re-read and unchanged), and the row
    # was delivered once the probe re-read the fixed secret: never rejected, never failed
    assert alerts[0][0] == "Downstream unhealthy"
    assert "api 401" in alerts[0][1]["reason"]
    assert "re-read from its secret is unchanged" in alerts[0][1]["reason"]
    assert "stale" not in str(alerts)  # the credential is never in a reason
    assert delivery.accepted
    assert [r.headers["Authorization"] for r in server.received][-1] == "Bearer fresh"
    assert table.get_item(Key={"pk": HEALTH_KEY})["Item"]["state"] == "closed"


def test_a_secret_without_its_fields_is_a_systemic_refusal_naming_the_keys_not_the_values(
    secrets: Secrets,
) -> None:
    arn = secrets.create("api-bearer", '{"access": "do-not-log-me"}')
    with ApiServer() as server:
        delivery = make_client(server, auth(secrets, "bearer", arn)).deliver(ROW, "key-1")

    assert not delivery.accepted
    assert delivery.reason is not None
    assert '"token"' in delivery.reason
    assert "['access']" in delivery.reason
    assert "do-not-log-me" not in delivery.reason
    assert server.received == []  # nothing was sent without its credential


def test_oauth_client_credentials_fetches_a_token_once_and_renews_it_when_it_expires(
    secrets: Secrets,
) -> None:
    # GIVEN a token endpoint that hands out 120-second tokens to client "c1" with secret "s1"
    clock = ManualClock(T0)
    issued: list[str] = []

    def respond(request: Received, seen: int) -> Reply:
        if request.path == "/token":
            form = parse_qs(request.payload)
            if request.headers.get("Authorization") != basic("c1", "s1") or form != {
                "grant_type": ["client_credentials"],
                "scope": ["rows:write"],
            }:
                return Reply(401, {"error": "invalid_client"})
            issued.append(f"at-{len(issued)}")
            return Reply(200, {"access_token": issued[-1], "token_type": "Bearer", "expires_in": 120})
        if not issued or request.headers.get("Authorization") != f"Bearer {issued[-1]}":
            return Reply(401, {"error": "invalid_token"})
        return Reply(200, {"ok": True})

    with ApiServer(respond) as server:
        base = server.url.rsplit("/", 1)[0]
        secret = json.dumps(
            {"token_url": f"{base}/token", "client_id": "c1", "client_secret": "s1", "scope": "rows:write"}
        )
        arn = secrets.create("api-oauth", secret)
        client = make_client(server, auth(secrets, "oauth2-client-credentials", arn, clock=clock.now))
        before = [client.deliver(ROW, f"key-{n}") for n in range(4)]
        clock.advance(110)  # past expires_in minus the margin (12 s, 10 % of 120)
        after = [client.deliver(ROW, f"key-{n}") for n in range(4, 6)]

    assert all(delivery.accepted for delivery in before + after)
    assert issued == ["at-0", "at-1"]
    api_calls = [r.headers["Authorization"] for r in server.received if r.path != "/token"]
    assert api_calls == ["Bearer at-0"] * 4 + ["Bearer at-1"] * 2


def test_a_put_with_a_column_in_the_url_and_static_headers(aws: None) -> None:
    with ApiServer() as server:
        base = server.url.rsplit("/", 1)[0]
        target = RequestTarget(f"{base}/items/{{id}}?v=1")
        client = make_client(server, None, method="PUT", target=target, headers={"X-Tenant": "acme"})
        for row in ({"id": "A-1"}, {"id": "a b/c?"}):
            assert client.deliver(row, "k", url=target.url(row)).accepted

    assert [(r.method, r.path) for r in server.received] == [
        ("PUT", "/items/A-1?v=1"),
        ("PUT", "/items/a%20b%2Fc%3F?v=1"),
    ]
    assert all(r.headers["X-Tenant"] == "acme" for r in server.received)


def test_a_row_that_cannot_fill_the_url_says_which_column() -> None:
    target = RequestTarget("https://api.example.com/items/{id}")
    with pytest.raises(RowUrlError, match=r"id: is empty"):
        target.url({"id": "  "})
    with pytest.raises(RowUrlError, match=r"ApiUrl names \{id\}, which is not a column of this file"):
        target.url({"other": "1"})
    assert RequestTarget("https://api.example.com/items").url({"id": "1"}) is None


REQUIRED = {
    "METADATA_TABLE": "MetadataTable",
    "CONTROL_TABLE": "ControlTable",
    "IDEMPOTENCY_TABLE": "IdempotencyTable",
    "PROCESSED_BUCKET": "processed",
    "STAGE": "dev",
    "API_URL": "https://api.example.com/items/{id}",
}


@pytest.mark.parametrize(
    ("environment", "problem"),
    [
        ({"API_AUTH_TYPE": "bearer"}, "API_AUTH_TYPE=bearer needs API_AUTH_SECRET_ARN"),
        ({"API_AUTH_SECRET_ARN": "arn:x"}, "API_AUTH_SECRET_ARN is set with API_AUTH_TYPE=none"),
        ({"API_HEADERS": '{"Authorization": "x"}'}, "API_HEADERS may not set Authorization"),
        ({"API_HEADERS": "[1]"}, "API_HEADERS must be a JSON object of strings"),
        (
            {"API_URL": "https://api.example.com/items/{id"},
            "a brace that is not part of a {column} placeholder",
        ),
        ({"API_METHOD": "DELETE"}, "API_METHOD"),
        ({"API_BATCH_SIZE": "10"}, "a batch has no one row to fill them from"),
        ({"API_BATCH_SIZE": "501"}, "API_BATCH_SIZE"),
    ],
)
def test_the_cold_start_refuses_a_request_shape_it_cannot_send(
    environment: dict[str, str], problem: str
) -> None:
    with pytest.raises(RuntimeError, match=problem.replace("{", r"\{").replace("}", r"\}")):
        ProcessSettings.from_env({**REQUIRED, **environment})


def test_client_from_settings_sends_the_method_headers_and_credential_the_settings_name(
    secrets: Secrets,
) -> None:
    arn = secrets.create("api-key", '{"header": "X-Api-Key", "value": "k"}')
    settings = ProcessSettings.from_env(
        {
            **REQUIRED,
            "API_METHOD": "PATCH",
            "API_HEADERS": '{"X-Tenant": "acme"}',
            "API_AUTH_TYPE": "api-key",
            "API_AUTH_SECRET_ARN": arn,
        }
    )
    client = client_from_settings(settings, create_tables()["ControlTable"])

    assert client.target.columns == ("id",)
    assert client._auth is not None
    assert client._auth.kind == "api-key"
    assert client._static_headers == {"X-Tenant": "acme"}
