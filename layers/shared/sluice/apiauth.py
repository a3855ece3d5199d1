"""The downstream API's credential, read from Secrets Manager (ApiAuthType, ApiAuthSecretArn).

Like EventBridge API destinations' Connections, one secret per stack, its JSON by kind:

| ApiAuthType | secret JSON | sent as |
|---|---|---|
| `api-key` | `{"header": "X-Api-Key", "value": "…"}` | that header |
| `basic` | `{"username": "…", "password": "…"}` | `Authorization: Basic base64(user:password)` |
| `bearer` | `{"token": "…"}` | `Authorization: Bearer …` |
| `oauth2-client-credentials` | `{"token_url", "client_id", "client_secret", "scope"}` | `Bearer <token>` |

The secret is read with Powertools Parameters and cached per container for `max_age` seconds.
OAuth's access token comes from `token_url` (RFC 6749 §4.4: `grant_type=client_credentials`, the
client authenticated with HTTP Basic as §2.3.1 requires every server to accept) and is cached
until `expires_in` minus a margin (without `expires_in`, until the API answers 401).

A 401 from the API may mean the secret was rotated since it was cached: `rejected` re-reads it
(and renews the access token), at most once per REREAD_MIN_SECONDS whatever the number of workers
that saw the 401, and says whether the credential changed, in which case the row is sent again
(downstream.py). A credential that does not change is the API's refusal: downstream.py treats it
as every other systemic answer (the shared breaker opens with the reason, an alert goes out, rows
wait; the next probe's 401 re-reads the secret again, so a fix is picked up without a redeploy).

The credential is never logged, never in a reason, in the state or in the environment: problems
name the secret's ARN and the JSON keys it lacks, never a value. Hand-written rather than with an
OAuth library: one form POST with urllib3 (already the transport) against pulling requests and
oauthlib into every function's layer.
"""

import base64
import hashlib
import json
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol
from urllib.parse import urlencode

import urllib3
from aws_lambda_powertools.utilities import parameters

from sluice.settings import ApiAuthType, ProcessSettings, url_problem

REREAD_MIN_SECONDS = 1.0  # a burst of 401s on many workers re-reads the secret once
TOKEN_EXPIRY_MARGIN_SECONDS = 60.0  # an access token is renewed this long before it expires (at most 10 %)
TOKEN_TIMEOUT_SECONDS = 10.0
# The JSON keys each kind of secret must hold (docs/interfaces.md, Authentication).
SECRET_KEYS: dict[str, tuple[str, ...]] = {
    "api-key": ("header", "value"),
    "basic": ("username", "password"),
    "bearer": ("token",),
    "oauth2-client-credentials": ("token_url", "client_id", "client_secret"),
}


class AuthError(Exception):
    """No credential to send. `transient`: the token endpoint failed (5xx, no answer), retry as
    for a 5xx; otherwise the secret or the credential is wrong, a systemic problem."""

    def __init__(self, problem: str, *, transient: bool = False):
        super().__init__(problem)
        self.problem = problem
        self.transient = transient


class SecretSource(Protocol):
    """Powertools' SecretsProvider: the secret's text, cached `max_age` seconds unless `force_fetch`."""

    def get(
        self, name: str, max_age: int | None = None, transform: None = None, force_fetch: bool = False
    ) -> Any: ...


class ApiAuth:
    """The headers that carry the credential; thread-safe (one per container, shared by its workers)."""

    def __init__(
        self,
        kind: ApiAuthType,
        secret_id: str,
        *,
        secrets: SecretSource,
        stage: str,
        max_age_seconds: int = 300,
        http: urllib3.PoolManager | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.kind = kind
        self._secret_id = secret_id
        self._secrets = secrets
        self._stage = stage
        self._max_age = max_age_seconds
        self._http = http or urllib3.PoolManager(
            retries=False, timeout=urllib3.Timeout(total=TOKEN_TIMEOUT_SECONDS)
        )
        self._clock = clock
        self._lock = threading.Lock()
        self._token: tuple[str, float] | None = None  # OAuth access token, expires at (epoch seconds)
        self._headers: dict[str, str] = {}
        self._fingerprint = ""
        self._reread_at = float("-inf")
        self._force_next = False  # the cached secret was unusable: read it again next time

    def current(self) -> tuple[dict[str, str], str]:
        """The credential's headers and their fingerprint (what `rejected` is told back)."""
        with self._lock:
            self._refresh(force=self._force_next)
            return dict(self._headers), self._fingerprint

    def rejected(self, fingerprint: str) -> bool:
        """The API answered 401 to the credential `fingerprint`: re-read it; True if it changed."""
        with self._lock:
            if fingerprint != self._fingerprint:
                return True  # another worker renewed it meanwhile
            now = self._clock()
            if now - self._reread_at < REREAD_MIN_SECONDS:
                return False  # re-read a moment ago for this very credential: the API refuses it
            self._reread_at = now
            self._token = None
            self._refresh(force=True)
            return self._fingerprint != fingerprint

    def _refresh(self, *, force: bool) -> None:
        secret = self._secret(force=force)
        headers = self._build(secret, force=force)
        self._headers = headers
        self._fingerprint = hashlib.sha256(json.dumps(sorted(headers.items())).encode()).hexdigest()

    def _secret(self, *, force: bool) -> dict[str, str]:
        try:
            text = self._secrets.get(self._secret_id, max_age=self._max_age, force_fetch=force)
        except parameters.exceptions.GetParameterError as error:
            self._force_next = True
            raise AuthError(f"cannot read secret {self._secret_id}: {error}") from None
        try:
            value = json.loads(text) if isinstance(text, (str, bytes)) else None
        except ValueError:
            value = None
        keys = SECRET_KEYS[self.kind]
        if not isinstance(value, dict) or not all(
            isinstance(value.get(key), str) and value[key] for key in keys
        ):
            self._force_next = True
            found = sorted(value) if isinstance(value, dict) else "not a JSON object"
            wanted = ", ".join(f'"{key}"' for key in keys)
            raise AuthError(
                f"secret {self._secret_id} for ApiAuthType={self.kind} needs a JSON object with "
                f"non-empty {wanted} (it holds: {found})"
            )
        self._force_next = False
        return value

    def _build(self, secret: Mapping[str, str], *, force: bool) -> dict[str, str]:
        if self.kind == "api-key":
            return {secret["header"]: secret["value"]}
        if self.kind == "basic":
            pair = f"{secret['username']}:{secret['password']}".encode()
            return {"Authorization": f"Basic {base64.b64encode(pair).decode()}"}
        if self.kind == "bearer":
            return {"Authorization": f"Bearer {secret['token']}"}
        return {"Authorization": f"Bearer {self._access_token(secret, force=force)}"}

    def _access_token(self, secret: Mapping[str, str], *, force: bool) -> str:
        now = self._clock()
        if self._token is not None and not force and now < self._token[1]:
            return self._token[0]
        token_url = secret["token_url"]
        if problem := url_problem(token_url, self._stage, what="token_url"):
            raise AuthError(f"secret {self._secret_id}: {problem}")
        form = {"grant_type": "client_credentials"}
        if secret.get("scope"):
            form["scope"] = secret["scope"]
        client = f"{secret['client_id']}:{secret['client_secret']}".encode()
        try:
            response = self._http.request(
                "POST",
                token_url,
                body=urlencode(form),
                headers={
                    "Content-Type": "application/x-www-form-urlencoded",
                    "Accept": "application/json",
                    "Authorization": f"Basic {base64.b64encode(client).decode()}",
                },
                retries=False,
                redirect=False,
            )
        except urllib3.exceptions.HTTPError as error:
            raise AuthError(f"token_url: {type(error).__name__}", transient=True) from None
        if response.status >= 500 or response.status in {408, 429}:
            raise AuthError(f"token_url answered {response.status}", transient=True)
        try:
            answer = json.loads(response.data)
        except ValueError:
            answer = None
        if response.status != 200 or not isinstance(answer, dict) or not answer.get("access_token"):
            # RFC 6749 §5.2's error code, never the body: it could echo what was sent
            code = answer.get("error") if isinstance(answer, dict) else None
            raise AuthError(f"token_url answered {response.status} ({code or 'no access_token'})")
        lifetime = float(answer.get("expires_in") or float("inf"))
        margin = min(TOKEN_EXPIRY_MARGIN_SECONDS, lifetime / 10)
        self._token = (str(answer["access_token"]), now + lifetime - margin)
        return self._token[0]


def auth_from_settings(settings: ProcessSettings) -> ApiAuth | None:
    """ProcessObject's: None without ApiAuthType; the secret read through Powertools' cache."""
    if settings.api_auth_type == "none" or settings.api_mode != "http":
        return None
    return ApiAuth(
        settings.api_auth_type,
        settings.api_auth_secret_arn,
        secrets=parameters.SecretsProvider(),
        stage=settings.stage,
        max_age_seconds=settings.api_auth_secret_max_age_seconds,
    )
