"""Issue 12, end to end offline: `sluice run` with your CSV (RowSchema=passthrough), your API
(--api-url with {id}, ApiMethod=PUT) and its bearer token from Secrets Manager (--secret), which
is rotated mid-run. The API is a loopback server started and stopped by the test."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any
from urllib.parse import quote

import boto3
from datapath_support import ApiServer, Received, Reply
from typer.testing import CliRunner

from integration.stacks import REPO, stop_all
from sluice_cli.main import app

runner = CliRunner()
ROTATE_AFTER = 8  # accepted requests before the token is rotated


class RotatingBearerApi:
    """PUT /items/{id} with `Authorization: Bearer <token>`; after ROTATE_AFTER accepted rows it
    rotates the token: first the secret in the emulator (as a rotation Lambda would), then itself."""

    def __init__(self, outputs: Path) -> None:
        self.outputs = outputs
        self.token = "t1"
        self.accepted: list[Received] = []
        self.lock = threading.Lock()

    def respond(self, request: Received, seen: int) -> Reply:
        with self.lock:
            if request.method != "PUT" or request.headers.get("Authorization") != f"Bearer {self.token}":
                return Reply(401, {"error": "invalid_token"})
            if request.payload.get("name") == "refused":
                return Reply(422, {"error": "name refused"})
            self.accepted.append(request)
            if len(self.accepted) == ROTATE_AFTER:
                self._rotate("t2")
            return Reply(200, {"stored": request.path})

    def _rotate(self, token: str) -> None:
        endpoint = json.loads(self.outputs.read_text())["EndpointUrl"]
        secrets = boto3.client(
            "secretsmanager",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="test",
            aws_secret_access_key="test",  # the emulator takes any
        )
        secrets.put_secret_value(SecretId="tok", SecretString=json.dumps({"token": token}))
        self.token = token


def test_your_csv_reaches_your_api_as_put_with_its_bearer_token_rotated_mid_run(tmp_path: Path) -> None:
    stop_all()  # `sluice run` starts its own stack; one per process
    ids = [f"A-{n}" for n in range(20)] + ["B/7 x"]
    lines = ["id,name,price"] + [f"{item},widget {item},{n}.50" for n, item in enumerate(ids)]
    lines += [",no id,1", "R-1,refused,2"]  # an empty {id}, a row the API answers 422
    mine = tmp_path / "my.csv"
    mine.write_text("\n".join(lines) + "\n")
    repeated = tmp_path / "repeated.csv"
    repeated.write_text("id,id\n1,2\n")  # passthrough needs unique names: INVALID, with its alert
    no_id = tmp_path / "no-id.csv"
    no_id.write_text("sku,name\n1,2\n")  # ApiUrl's {id} names no column of it: INVALID
    state = tmp_path / "state"
    api = RotatingBearerApi(state / "outputs.json")

    with ApiServer(api.respond) as server:
        url = server.url.rsplit("/", 1)[0] + "/items/{id}"
        result = runner.invoke(
            app,
            [
                "run",
                *("--files", str(mine), "--files", str(repeated), "--files", str(no_id)),
                *("-p", "RowSchema=passthrough", "--api-url", url, "-p", "ApiMethod=PUT"),
                *("-p", "ApiAuthType=bearer", "-p", "ApiAuthSecretArn=tok", "--secret", 'tok={"token":"t1"}'),
                *("--report", str(tmp_path / "report.json"), "--state-dir", str(state), "--timeout", "120"),
                *("--template", str(REPO / "template.yaml")),
            ],
        )

    assert result.exit_code == 0, result.output
    # THEN every row with an id reached the API once, as PUT /items/<id, URL-encoded>, as sent
    stored = {request.path: request.payload for request in api.accepted}
    assert stored == {
        f"/items/{quote(item, safe='')}": {"id": item, "name": f"widget {item}", "price": f"{n}.50"}
        for n, item in enumerate(ids)
    }
    # AND the rotation cost 401s, then the new token, no row
    tokens = [request.headers["Authorization"] for request in api.accepted]
    assert tokens[:ROTATE_AFTER] == ["Bearer t1"] * ROTATE_AFTER
    assert set(tokens[ROTATE_AFTER:]) == {"Bearer t2"}
    assert any(
        request.headers.get("Authorization") == "Bearer t1" for request in server.received[ROTATE_AFTER:]
    )
    report: dict[str, Any] = json.loads((tmp_path / "report.json").read_text())
    files = {file["key"].rsplit("/", 1)[-1]: file for file in report["files"]}
    assert files["my.csv"]["state"] == "SUCCEEDED_WITH_REJECTS"
    # AND report.json keeps each reject's reason
    assert files["my.csv"]["rejects"] == [
        {"row": len(ids) + 1, "reason": "id: is empty, and ApiUrl needs it ({id})"},
        {"row": len(ids) + 2, "reason": 'api 422: {"error": "name refused"}'},
    ]
    assert files["repeated.csv"]["state"] == "INVALID"
    assert "repeated column 'id'" in files["repeated.csv"]["error"]
    assert files["no-id.csv"]["state"] == "INVALID"
    assert "ApiUrl's {id} names no column of this file" in files["no-id.csv"]["error"]
    # AND without the simulator the API figures are Sluice's own, and say so
    assert report["api"]["source"] == "sluice"
    assert report["api"]["requests"] >= len(ids) + 1
    assert "Sluice's own figures" in result.output
    assert "docs/your-own-csv.md" in result.output
    mails = [path.read_text() for path in (state / "mail").glob("*.eml")]
    assert any("File INVALID" in mail and "docs/your-own-csv.md" in mail for mail in mails)
    # AND the token never reached a log line
    logs = "".join(path.read_text() for path in (state / "logs").glob("*.log"))
    assert "Bearer t" not in logs
    assert '"token"' not in logs
