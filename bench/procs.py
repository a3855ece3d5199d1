"""Processes the bench starts (moto server, API simulator, the offline stack, locust): output to a
log file, a deadline on every wait, and always stopped by the PID they were started with."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Self


class ProcessError(RuntimeError):
    pass


class Background:
    """One child process, its stdout and stderr in `log_path`."""

    def __init__(
        self,
        args: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.args = list(args)
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> Self:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            self.args,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env,
            cwd=self.cwd,
            start_new_session=True,  # its own group: a Ctrl-C in the terminal reaches the bench only
        )
        return self

    @property
    def pid(self) -> int:
        if self.process is None:
            raise ProcessError("not started")
        return self.process.pid

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def output(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def wait_for(self, pattern: str, *, timeout: float, what: str) -> re.Match[str]:
        """Until `pattern` appears in the output; ProcessError if the process dies or time runs out."""
        compiled = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            if match := compiled.search(self.output()):
                return match
            if not self.running():
                raise ProcessError(f"{what}: the process exited; last output:\n{self.output()[-2000:]}")
            if time.monotonic() >= deadline:
                raise ProcessError(f"gave up after {timeout:.0f} s waiting for {what}")
            time.sleep(0.1)

    def wait(self, timeout: float) -> int | None:
        """The exit code, or None if it still runs after `timeout`."""
        if self.process is None:
            return None
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, grace: float = 15.0) -> int | None:
        """SIGTERM to the process (its own session), SIGKILL after `grace` seconds."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            if self.wait(grace) is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.wait(5)
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.process.returncode

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
