"""A rate limiter nobody on the team wrote, as the judge of "never faster": stock nginx's limit_req.

Sluice's own simulator (apisim.py) counts arrivals with code written beside the code it judges, so
a shared misconception would pass both. nginx (Debian's package) is the independent judge: it
refuses, with 429, every request that its leaky bucket says came too soon, and its access log
records each request's time to the millisecond.

The policy is declared the way such an API documents it: `rate` requests per second and `burst`
requests tolerated at once beyond the rate (nginx's `limit_req ... burst=B nodelay`; burst 0 means
strict spacing: nginx refuses a request less than 1/rate after the previous accepted one). The
zone's key is a constant, so every client shares one bucket, as a quota shared by a whole stack.

Two answers after the limiter (measured: `return 200` in the limited location answers in the
rewrite phase, *before* limit_req runs in the preaccess phase, so it would never refuse anything):
- no upstream: a named location reached by `try_files` (a phase after limit_req) answers 200;
- an upstream (e.g. the simulator, for its latency and its record of deliveries): `proxy_pass`.

nginx runs in the foreground as this process's child (`daemon off`), on 127.0.0.1, with every
file under its own directory; `stop()` ends it by its PID.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from sluice_cli.apisim import max_in_window

NGINX = "nginx"
# $msec is when the request ended (log time); the arrival is $msec - $request_time.
LOG_FORMAT = "$msec $request_time $status $http_idempotency_key"
START_TIMEOUT_SECONDS = 10.0


class NginxUnavailable(RuntimeError):
    """nginx is not installed (Debian: `apt-get install nginx`; `.ci/run` installs it)."""


@dataclass(frozen=True)
class LimitPolicy:
    """The API's published limit: `rate` requests/s, `burst` tolerated at once beyond it."""

    rate: int
    burst: int = 0

    def limit_req(self) -> str:
        # nginx refuses `burst=0`: a strict leaky bucket is limit_req without burst.
        burst = f" burst={self.burst}" if self.burst else ""
        return f"limit_req zone=judge{burst} nodelay;"


@dataclass(frozen=True)
class Arrival:
    at: float  # epoch seconds the request arrived at nginx
    status: int
    key: str  # the Idempotency-Key header, "-" when absent


@dataclass(frozen=True)
class Verdict:
    """What nginx saw: the figures the promise "never faster, each row once" is judged by."""

    requests: int
    accepted: int
    refused_429: int
    busiest_second: int  # most arrivals (any status) in a sliding one-second window
    busiest_accepted_second: int
    duplicate_keys: int  # keys answered 2xx more than once
    first_arrival: float | None
    last_arrival: float | None

    @property
    def accepted_rate(self) -> float:
        """Accepted requests per second between the first and the last arrival."""
        if self.first_arrival is None or self.last_arrival is None or self.last_arrival <= self.first_arrival:
            return 0.0
        return self.accepted / (self.last_arrival - self.first_arrival)


def judge(arrivals: list[Arrival]) -> Verdict:
    times = sorted(a.at for a in arrivals)
    accepted = [a for a in arrivals if 200 <= a.status < 300]
    answered_twice = Counter(a.key for a in accepted if a.key != "-")
    return Verdict(
        requests=len(arrivals),
        accepted=len(accepted),
        refused_429=sum(1 for a in arrivals if a.status == 429),
        busiest_second=max_in_window(times) if times else 0,
        busiest_accepted_second=max_in_window(sorted(a.at for a in accepted)) if accepted else 0,
        duplicate_keys=sum(1 for count in answered_twice.values() if count > 1),
        first_arrival=times[0] if times else None,
        last_arrival=times[-1] if times else None,
    )


def parse_log(text: str) -> list[Arrival]:
    arrivals = []
    for line in text.splitlines():
        try:
            msec, request_time, status, key = line.split()
            arrivals.append(Arrival(at=float(msec) - float(request_time), status=int(status), key=key))
        except ValueError:  # not a line of LOG_FORMAT (nginx writes only those; be strict elsewhere)
            continue
    return arrivals


def _free_port() -> int:
    # nginx cannot report a port it chose, so one is picked here; start() retries on a clash.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class NginxJudge:
    """nginx with `policy` on 127.0.0.1, answering itself or proxying to `upstream`."""

    def __init__(self, policy: LimitPolicy, workdir: Path, *, upstream: str | None = None) -> None:
        self.policy = policy
        self.workdir = Path(workdir)
        self.upstream = upstream.rstrip("/") if upstream else None
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def access_log(self) -> Path:
        return self.workdir / "access.log"

    def config(self) -> str:
        answer = (
            f'proxy_pass {self.upstream}; proxy_http_version 1.1; proxy_set_header Connection "";'
            if self.upstream
            else "try_files /nonexistent @accepted;"
        )
        temp = " ".join(
            f"{kind}_temp_path {self.workdir / kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        return f"""
daemon off;
{self._user()}worker_processes 1;
pid {self.workdir / "nginx.pid"};
error_log {self.workdir / "error.log"} warn;
events {{ worker_connections 1024; }}
http {{
    {temp}
    log_format judge '{LOG_FORMAT}';
    access_log {self.access_log} judge;
    limit_req_zone "shared" zone=judge:1m rate={self.policy.rate}r/s;
    limit_req_status 429;
    keepalive_requests 100000;
    server {{
        listen 127.0.0.1:{self.port};
        root {self.workdir};
        location / {{
            {self.policy.limit_req()}
            {answer}
        }}
        location @accepted {{
            default_type application/json;
            return 200 '{{"ok":true}}';
        }}
    }}
}}
"""

    @staticmethod
    def _user() -> str:
        # As root, nginx's workers run as `nobody`, who cannot stat files in this private directory
        # (try_files would log a permission error per request): keep them as the user who started it.
        return f"user {getpass.getuser()};\n" if os.geteuid() == 0 else ""

    def restart(self, policy: LimitPolicy) -> Self:
        """The same nginx (same port, so clients keep its URL) with another policy, log cleared."""
        self.stop()
        self.policy = policy
        return self.start(port=self.port)

    def start(self, port: int = 0) -> Self:
        if shutil.which(NGINX) is None:
            raise NginxUnavailable("nginx is not installed: apt-get install nginx (make setup-judges)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            self.port = port or _free_port()
            conf = self.workdir / "nginx.conf"
            conf.write_text(self.config())
            self.access_log.unlink(missing_ok=True)
            self._process = subprocess.Popen(  # noqa: S603 - a fixed binary, our own config
                [NGINX, "-p", str(self.workdir), "-c", str(conf)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            if self._wait_until_listening():
                return self
            self.stop()
        error = (self.workdir / "error.log").read_text() if (self.workdir / "error.log").exists() else ""
        raise RuntimeError(f"nginx did not start on 127.0.0.1: {error[-500:]}")

    def _wait_until_listening(self) -> bool:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                return False
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2),
            ):
                return True
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.terminate()  # SIGTERM: nginx's fast shutdown
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=5)
        self._process = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def arrivals(self, *, at_least: int = 0, timeout: float = 5.0) -> list[Arrival]:
        """The logged arrivals, once the log holds `at_least` of them and has stopped growing.

        nginx writes a request's log line after its answer is sent, so a client that has its answer
        can read the log before the line is there: wait for it, with a deadline.
        """
        deadline = time.monotonic() + timeout
        seen = -1
        while True:
            text = self.access_log.read_text() if self.access_log.exists() else ""
            arrivals = parse_log(text)
            if (len(arrivals) >= at_least and len(arrivals) == seen) or time.monotonic() > deadline:
                return arrivals
            seen = len(arrivals)
            time.sleep(0.1)

    def verdict(self, *, at_least: int = 0) -> Verdict:
        return judge(self.arrivals(at_least=at_least))

    def clear_log(self) -> None:
        """Forget earlier arrivals (nginx keeps the file open, so it is truncated, not removed)."""
        if self.access_log.exists():
            with self.access_log.open("r+") as log:
                log.truncate(0)


def post(url: str, key: str, body: bytes = b"{}", timeout: float = 5.0) -> int:
    """One POST with an Idempotency-Key; the status (a 429 is an answer, not an error)."""
    request = urllib.request.Request(  # noqa: S310 - the judge's own loopback URL
        url, data=body, method="POST", headers={"Content-Type": "application/json", "Idempotency-Key": key}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
